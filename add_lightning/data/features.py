"""Kaldi-style log-mel filterbank features and their normalisation, as in AST and BEATs.

``compute_fbank`` reproduces the AST recipe (``ast/src/dataloader.py``) and transformers'
``ASTFeatureExtractor``: ``torchaudio.compliance.kaldi.fbank`` on a 16 kHz waveform, then the
time axis zero-padded (in the log domain, before normalisation) or cropped to ``target_frames``.
``Normalization.apply`` is AST's ``(x - mean) / (2 * std)``, which gives features of mean 0 and
standard deviation 0.5 when mean/std are the dataset's statistics.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import torch
import torchaudio.compliance.kaldi
from torch import Tensor

from . import audio

KALDI_WINDOW_TYPES = ("hamming", "hanning", "povey", "rectangular", "blackman")


def _is_number(value: object, integer: bool = False) -> bool:
    """True for finite ints (and floats unless ``integer``), never for bools."""
    valid_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    return valid_type and not isinstance(value, bool) and math.isfinite(value)  # type: ignore[arg-type]


def _check_number(name: str, value: float) -> None:
    if not _is_number(value):
        raise ValueError(f"Expected argument `{name}` to be a finite number but got {value!r}.")


def _check_positive(name: str, value: float, integer: bool = False) -> None:
    kind = "integer" if integer else "number"
    if not _is_number(value, integer) or value <= 0:
        raise ValueError(f"Expected argument `{name}` to be a positive {kind} but got {value!r}.")


@dataclass(frozen=True)
class FbankOptions:
    """Settings of the log-mel filterbank (the Kaldi names, in the units kaldi.fbank takes).

    Args:
        sample_rate: Rate of the waveforms in Hz; ``load_audio`` resamples files to it.
        num_mel_bins: Number of mel bins F.
        frame_length_ms: Window length in milliseconds.
        frame_shift_ms: Hop between frames in milliseconds.
        window_type: One of ``KALDI_WINDOW_TYPES``: AST uses ``"hanning"``, BEATs ``"povey"``.
        dither: Gaussian dither amplitude added by Kaldi (0 = none, deterministic; > 0 draws
            from the global torch RNG, and a ``FeatureCache`` freezes one draw per clip).
        target_frames: Frames T after zero-padding/cropping the time axis.
        waveform_scale: Factor applied to the waveform before the fbank; ``2**15 = 32768`` for
            BEATs' preprocessing (16-bit integer range), 1 for AST.
        low_freq: Lowest mel filter edge in Hz (Kaldi default 20).
        high_freq: Highest mel filter edge in Hz; ``<= 0`` means Nyquist + ``high_freq`` (Kaldi).
    """

    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window_type: str = "hanning"
    dither: float = 0.0
    target_frames: int = 1024
    waveform_scale: float = 1.0
    low_freq: float = 20.0
    high_freq: float = 0.0

    def __post_init__(self) -> None:
        _check_positive("sample_rate", self.sample_rate, integer=True)
        _check_positive("num_mel_bins", self.num_mel_bins, integer=True)
        _check_positive("frame_length_ms", self.frame_length_ms)
        _check_positive("frame_shift_ms", self.frame_shift_ms)
        _check_positive("target_frames", self.target_frames, integer=True)
        _check_positive("waveform_scale", self.waveform_scale)
        if self.window_type not in KALDI_WINDOW_TYPES:
            raise ValueError(
                f"Expected argument `window_type` to be one of {KALDI_WINDOW_TYPES} "
                f"but got {self.window_type!r}."
            )
        if not _is_number(self.dither) or self.dither < 0:
            raise ValueError(
                f"Expected argument `dither` to be a finite number >= 0 but got {self.dither!r}."
            )
        for name, samples, least in (
            ("frame_length_ms", self.window_samples, 2),
            ("frame_shift_ms", self.shift_samples, 1),
        ):
            if samples < least:
                raise ValueError(
                    f"Expected argument `{name}` to span at least {least} samples at "
                    f"{self.sample_rate} Hz but got {getattr(self, name)} ms = {samples} samples."
                )
        _check_number("low_freq", self.low_freq)
        _check_number("high_freq", self.high_freq)
        nyquist = self.sample_rate / 2
        high = self.high_freq if self.high_freq > 0 else nyquist + self.high_freq
        if not (0 <= self.low_freq < high <= nyquist):
            raise ValueError(
                "Expected 0 <= `low_freq` < effective `high_freq` <= Nyquist "
                f"({nyquist} Hz) but got low_freq={self.low_freq}, high_freq={self.high_freq} "
                f"(effective {high})."
            )

    @property
    def window_samples(self) -> int:
        """Samples per window (Kaldi truncates)."""
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def shift_samples(self) -> int:
        """Samples between frame starts (Kaldi truncates)."""
        return int(self.sample_rate * self.frame_shift_ms * 0.001)


def compute_fbank_frames(waveform: Tensor, options: FbankOptions) -> Tensor:
    """Log-mel filterbank of every complete frame of a waveform, without padding or cropping.

    The kaldi.fbank call is the AST recipe's: ``htk_compat=True, use_energy=False``, the window,
    bins and dither from ``options``, and Kaldi's per-frame DC-offset removal (which makes the AST
    recipe's extra ``waveform - waveform.mean()`` redundant, so it is not repeated: this keeps
    the float32 arithmetic identical to transformers' ASTFeatureExtractor).

    Args:
        waveform: Mono waveform at ``options.sample_rate``.
        options: Filterbank settings.

    Returns:
        float32 log-mel energies.

    Shape:
        - waveform: ``[num_samples]`` with ``num_samples >= options.window_samples``.
        - Output: ``[num_frames, num_mel_bins]``, num_frames = 1 + (num_samples - window) // shift.

    Raises:
        ValueError: If the waveform is not 1-D, not floating point, shorter than one window, or
            so loud that the filterbank overflows.
    """
    if waveform.dim() != 1:
        raise ValueError(
            f"Expected argument `waveform` to be 1-D [num_samples] but got shape "
            f"{tuple(waveform.shape)}."
        )
    if not waveform.is_floating_point():
        raise ValueError(
            f"Expected argument `waveform` to be floating point but got {waveform.dtype}."
        )
    if waveform.numel() < options.window_samples:
        raise ValueError(
            f"Expected argument `waveform` to hold at least one window "
            f"({options.window_samples} samples = {options.frame_length_ms} ms at "
            f"{options.sample_rate} Hz) but got {waveform.numel()} samples."
        )
    waveform = waveform.to(torch.float32) * options.waveform_scale
    fbank = torchaudio.compliance.kaldi.fbank(
        waveform.unsqueeze(0),
        sample_frequency=options.sample_rate,
        num_mel_bins=options.num_mel_bins,
        frame_length=options.frame_length_ms,
        frame_shift=options.frame_shift_ms,
        window_type=options.window_type,
        dither=options.dither,
        low_freq=options.low_freq,
        high_freq=options.high_freq,
        htk_compat=True,
        use_energy=False,
    )
    if not torch.isfinite(fbank).all():
        # Finite samples can still overflow the float32 power spectrum (|x| above ~1e19).
        peak = waveform.abs().max().item() / options.waveform_scale
        raise ValueError(
            "the filterbank has non-finite values: expected samples in about [-1, 1] but the "
            f"largest |sample| is {peak:.3g}"
        )
    return fbank


def load_fbank_frames(path: str | os.PathLike[str], options: FbankOptions) -> Tensor:
    """``compute_fbank_frames`` of the audio file ``path`` (read with ``audio.load_audio``).

    Shape:
        - Output: ``[num_frames, num_mel_bins]``, float32.

    Raises:
        AudioError: If the file cannot be read or is shorter than one window.
    """
    waveform = audio.load_audio(path, options.sample_rate)
    try:
        return compute_fbank_frames(waveform, options)
    except ValueError as err:
        raise audio.AudioError(f"Audio file {path}: {err}") from err


def pad_or_crop(fbank: Tensor, target_frames: int) -> Tensor:
    """Zero-pads the end of the time axis or crops it to ``target_frames`` (AST's rule).

    Shape:
        - fbank: ``[num_frames, F]``.
        - Output: ``[target_frames, F]``.
    """
    difference = target_frames - fbank.shape[0]
    if difference > 0:
        return torch.nn.functional.pad(fbank, (0, 0, 0, difference))
    return fbank[:target_frames]


def compute_fbank(waveform: Tensor, options: FbankOptions) -> Tensor:
    """Un-normalised log-mel filterbank padded or cropped to ``options.target_frames``.

    Equals transformers' ``ASTFeatureExtractor`` before normalisation for the same settings.

    Shape:
        - waveform: ``[num_samples]`` at ``options.sample_rate``.
        - Output: ``[target_frames, num_mel_bins]``, float32.
    """
    return pad_or_crop(compute_fbank_frames(waveform, options), options.target_frames)


@dataclass(frozen=True)
class Normalization:
    """AST's feature normalisation ``(x - mean) / (2 * std)`` (output std 0.5 on the dataset).

    Args:
        mean: Mean of the un-normalised features.
        std: Standard deviation of the un-normalised features, > 0.
    """

    mean: float
    std: float

    def __post_init__(self) -> None:
        _check_number("mean", self.mean)
        _check_positive("std", self.std)

    def apply(self, features: Tensor) -> Tensor:
        """Normalises features of any shape."""
        return (features - self.mean) / (2 * self.std)

    def apply_(self, features: Tensor) -> Tensor:
        """Normalises ``features`` in place (the values of :meth:`apply`) and returns them."""
        return features.sub_(self.mean).div_(2 * self.std)

    @classmethod
    def from_preset(cls, name: str) -> Normalization:
        """The statistics named ``name`` in ``NORMALIZATION_PRESETS``."""
        if name not in NORMALIZATION_PRESETS:
            raise ValueError(
                f"Expected argument `name` to be one of {sorted(NORMALIZATION_PRESETS)} "
                f"but got {name!r}."
            )
        return NORMALIZATION_PRESETS[name]


AUDIOSET_NORMALIZATION = Normalization(mean=-4.2677393, std=4.5689974)
"""AudioSet statistics: the defaults of transformers' ASTFeatureExtractor."""
ESC50_NORMALIZATION = Normalization(mean=-6.6268077, std=5.358466)
"""ESC-50 statistics of the original AST recipe (512 frames)."""
SPEECH_COMMANDS_NORMALIZATION = Normalization(mean=-6.845978, std=5.5654526)
"""Speech Commands V2 statistics of the original AST recipe (128 frames)."""
BEATS_NORMALIZATION = Normalization(mean=15.41663, std=6.55582)
"""BEATs' preprocessing (waveform x 2**15, povey window)."""

NORMALIZATION_PRESETS: Mapping[str, Normalization] = MappingProxyType(
    {
        "audioset": AUDIOSET_NORMALIZATION,
        "esc50": ESC50_NORMALIZATION,
        "speech_commands": SPEECH_COMMANDS_NORMALIZATION,
        "beats": BEATS_NORMALIZATION,
    }
)


class RawFeatureSource(Protocol):
    """Anything indexable for un-normalised, un-augmented features, e.g. ``ClipDataset``."""

    def __len__(self) -> int: ...

    def raw_features(self, index: int) -> Tensor: ...


def compute_normalization(dataset: RawFeatureSource) -> Normalization:
    """Mean and standard deviation of every feature value of ``dataset`` (pass a training split).

    Reads ``dataset.raw_features(i)`` (un-normalised, un-augmented, padded to target_frames as the
    model sees them, like AST's ``get_norm_stats.py``) for exactly the dataset's items, and
    accumulates in float64 by combining per-clip means and squared deviations (Chan et al.), so
    the result is the population mean/std over all values.

    Raises:
        ValueError: If the dataset is empty or its features are constant.
    """
    if len(dataset) == 0:
        raise ValueError("Expected argument `dataset` to hold at least one clip but it is empty.")
    count, mean, m2 = 0, 0.0, 0.0
    for index in range(len(dataset)):
        values = dataset.raw_features(index).to(torch.float64)
        n = values.numel()
        clip_mean = values.mean().item()
        clip_m2 = ((values - clip_mean) ** 2).sum().item()
        delta = clip_mean - mean
        total = count + n
        mean += delta * n / total
        m2 += clip_m2 + delta**2 * count * n / total
        count = total
    std = math.sqrt(m2 / count)
    if std == 0:
        raise ValueError(
            f"Expected the features of `dataset` to vary but all {count} values equal {mean}."
        )
    return Normalization(mean=mean, std=std)


__all__ = [
    "AUDIOSET_NORMALIZATION",
    "BEATS_NORMALIZATION",
    "ESC50_NORMALIZATION",
    "KALDI_WINDOW_TYPES",
    "NORMALIZATION_PRESETS",
    "SPEECH_COMMANDS_NORMALIZATION",
    "FbankOptions",
    "Normalization",
    "RawFeatureSource",
    "compute_fbank",
    "compute_fbank_frames",
    "compute_normalization",
    "load_fbank_frames",
    "pad_or_crop",
]
