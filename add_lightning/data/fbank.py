"""Kaldi-style log-mel filterbanks (the model's input features), as in AST and BEATs.

``FbankOptions`` holds the settings; ``compute_fbank`` reproduces the AST recipe
(``ast/src/dataloader.py``) and transformers' ``ASTFeatureExtractor``:
``torchaudio.compliance.kaldi.fbank`` on a 16 kHz waveform, then the time axis zero-padded (in
the log domain, before normalisation) or cropped to ``target_frames``. Their normalisation is
:mod:`add_lightning.data.normalization`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torchaudio.compliance.kaldi
from torch import Tensor

from add_lightning.checks import check_number, check_positive, is_number

from . import audio

KALDI_WINDOW_TYPES = ("hamming", "hanning", "povey", "rectangular", "blackman")


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
        check_positive("sample_rate", self.sample_rate, integer=True)
        check_positive("num_mel_bins", self.num_mel_bins, integer=True)
        check_positive("frame_length_ms", self.frame_length_ms)
        check_positive("frame_shift_ms", self.frame_shift_ms)
        check_positive("target_frames", self.target_frames, integer=True)
        check_positive("waveform_scale", self.waveform_scale)
        if self.window_type not in KALDI_WINDOW_TYPES:
            raise ValueError(
                f"Expected argument `window_type` to be one of {KALDI_WINDOW_TYPES} "
                f"but got {self.window_type!r}."
            )
        if not is_number(self.dither) or self.dither < 0:
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
        check_number("low_freq", self.low_freq)
        check_number("high_freq", self.high_freq)
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


__all__ = [
    "KALDI_WINDOW_TYPES",
    "FbankOptions",
    "compute_fbank",
    "compute_fbank_frames",
    "load_fbank_frames",
    "pad_or_crop",
]
