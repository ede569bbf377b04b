"""The input pipeline: what turns a waveform into a model's input, one object per kind.

An :class:`InputPipeline` holds every fact of that path (sample rate, filterbank settings,
normalisation statistics, crop length, class names) and is carried whole: the data module
builds it while training (``AudioDataModule.pipeline``), every checkpoint stores its
:meth:`~InputPipeline.to_state` under one key (:data:`add_lightning.checkpoint.PIPELINE_KEY`),
and ``classify``, ``predict`` and ``export`` rebuild it with :meth:`InputPipeline.from_state`
and use it as it is. Two kinds:

- :class:`FbankPipeline`, for models trained on filterbanks (AST, BEATs; ``AudioDataModule``).
- :class:`WaveformPipeline`, for speech encoders trained on raw waveforms (``HFAudioEncoder``;
  ``WaveformDataModule``).

From a waveform to the model's windows (:meth:`InputPipeline.clip_windows`):

1. Mono and rate: the channels of a ``[channels, num_samples]`` waveform are averaged, then
   it is resampled to the training rate (:func:`~add_lightning.data.audio.to_mono`), as
   ``load_audio`` reads training files.

Fbank models:

2. Filterbank: ``compute_fbank_frames`` with the training settings, dither off (so the scores
   of a file are the same on every call).
3. Windows: a clip of at most ``target_frames`` frames is zero-padded to ``target_frames``
   as in training (one window). A longer clip is cut into windows of ``target_frames``
   frames starting every ``hop_frames`` frames (default ``target_frames // 2``), plus one
   window ending at the last frame when the hops do not reach it, so every frame is covered
   and no window is padded. Each window's valid (unpadded) frame count goes with it, so a
   backbone that takes a padding mask (BEATs) ignores the padding, as in training.
4. Each window is normalised with the training statistics (``Normalization.apply``).

Waveform models score a clip as evaluation does (``WaveformDataModule``'s evaluation clips
are whole and unaugmented): the whole mono waveform of step 1 is one window, whatever its
length (``hop_frames`` does not apply); the encoder applies its own input normalisation.

Both kinds measure each window's level for the silence rule of ``add_lightning.inference``:
the RMS level of its loudest frame (the filterbank's frames, 25 ms every 10 ms for a waveform
model; each frame's mean removed, as the filterbank removes it), in dBFS.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from add_lightning.checks import check_int
from add_lightning.data.audio import to_mono
from add_lightning.data.fbank import FbankOptions, compute_fbank_frames, pad_or_crop
from add_lightning.data.normalization import Normalization

__all__ = [
    "ClipWindows",
    "FbankPipeline",
    "InputPipeline",
    "WaveformPipeline",
    "frame_levels",
    "window_starts",
]

_DIGITAL_SILENCE_DBFS = -200.0  # the level of an all-zero frame, instead of -inf
# Frames of the levels of a waveform model's clip, which has no filterbank: Kaldi's defaults.
_LEVEL_FRAME_S, _LEVEL_SHIFT_S = 0.025, 0.010


@dataclass
class ClipWindows:
    """The model's input windows of one clip, where they lie in it and how loud they are.

    Args:
        inputs: The windows (fbank: normalised; waveform model: the clip).
        lengths: Valid (unpadded) frames of each window (waveform model: samples).
        start_s: Where each window starts in the clip, in seconds.
        end_s: Where each window ends: the end of its last valid frame (waveform model: of
            the clip).
        level_dbfs: The RMS level of each window's loudest frame in dBFS.

    Shape:
        - inputs: ``[W, target_frames, num_mel_bins]`` float32 (waveform model: ``[1, N]``).
        - lengths: ``[W]`` int64; start_s, end_s, level_dbfs: ``[W]`` float64.
    """

    inputs: Tensor
    lengths: Tensor
    start_s: Tensor
    end_s: Tensor
    level_dbfs: Tensor


def frame_levels(waveform: Tensor, frame_samples: int, shift_samples: int) -> Tensor:
    """RMS level in dBFS of each frame of a mono waveform, its mean removed.

    Frames of ``frame_samples`` every ``shift_samples``, whole frames only (Kaldi's
    ``snip_edges``); a waveform shorter than one frame is one frame. An all-zero frame reads
    -200 dBFS rather than minus infinity (a constant one, a DC offset, about as low).

    Shape:
        - waveform: ``[num_samples]``.
        - Output: ``[max(1, 1 + (num_samples - frame_samples) // shift_samples)]``, float64.
    """
    frames = waveform.unfold(0, min(frame_samples, waveform.shape[0]), shift_samples)
    # the mean square about the frame's mean; reduced on the overlapping view, never copied
    power = frames.var(dim=1, correction=0).double()
    return 10 * torch.log10(power.clamp_min(10 ** (_DIGITAL_SILENCE_DBFS / 10)))


def window_starts(num_frames: int, target_frames: int, hop_frames: int) -> list[int]:
    """First frames of the windows of a clip of ``num_frames`` frames (step 3 of the module doc).

    ``[0]`` when ``num_frames <= target_frames``; otherwise ``0, hop, 2 hop, ...`` up to
    ``num_frames - target_frames``, which is added when the hops miss it.
    """
    last = num_frames - target_frames
    if last <= 0:
        return [0]
    starts = list(range(0, last + 1, hop_frames))
    if starts[-1] != last:
        starts.append(last)
    return starts


class InputPipeline(ABC):
    """What turns a waveform into a model's input: one subclass per kind of input.

    Subclasses are frozen dataclasses whose fields are the pipeline's state; ``kind`` names
    the subclass in :meth:`to_state`, so that :meth:`from_state` rebuilds the right one.
    """

    kind: ClassVar[str]
    #: The class names in id order.
    class_names: tuple[str, ...]
    #: The training rate in Hz (files are read at it).
    sample_rate: int

    @abstractmethod
    def clip_windows(
        self, waveform: Tensor | np.ndarray, sample_rate: int, hop_frames: int | None = None
    ) -> ClipWindows:
        """The model's windows of a waveform, where they lie in it and their levels.

        Args:
            waveform: ``[num_samples]`` or ``[channels, num_samples]`` at ``sample_rate``.
            sample_rate: Rate of ``waveform`` in Hz (any; resampled to the training rate).
            hop_frames: Frames between window starts of a long clip (fbank models); None
                means ``target_frames // 2``.
        """

    def inputs(
        self, waveform: Tensor | np.ndarray, sample_rate: int, hop_frames: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """The model's windows of a waveform and their valid frames (samples for a waveform
        model); see :meth:`clip_windows`.

        Shape:
            - Output: ``([W, target_frames, num_mel_bins], [W])``; waveform model:
              ``([1, num_samples], [1])`` at the training rate.
        """
        clip = self.clip_windows(waveform, sample_rate, hop_frames)
        return clip.inputs, clip.lengths

    def to_state(self) -> dict[str, Any]:
        """The pipeline as plain values (what a checkpoint stores): ``kind`` and the fields."""
        state = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {"kind": self.kind, **_plain(state), "class_names": list(self.class_names)}

    @staticmethod
    def from_state(state: Any, source: str = "the checkpoint") -> InputPipeline:
        """The pipeline that :meth:`to_state` gave ``state``.

        Args:
            state: The stored value.
            source: What holds it, for error messages (e.g. the checkpoint's path).

        Raises:
            ValueError: If ``state`` is not such a value, or an entry is missing or invalid.
        """
        kinds = {kind.kind: kind for kind in (FbankPipeline, WaveformPipeline)}
        kind = state.get("kind") if isinstance(state, Mapping) else None
        try:
            if kind not in kinds:
                raise ValueError(f"`kind` is {kind!r}, not one of {sorted(kinds)}")
            return kinds[kind]._from_fields(state)
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise ValueError(
                f"The input pipeline stored in {source} is damaged ({type(error).__name__}: "
                f"{error}); expected the one that `add-lightning fit` stores."
            ) from None

    @classmethod
    @abstractmethod
    def _from_fields(cls, state: Mapping[str, Any]) -> InputPipeline:
        """The pipeline of the fields of ``state`` (a ``to_state`` value of this kind)."""


def _plain(value: Any) -> Any:
    """Dataclasses as dicts, tuples as lists: what ``torch.load(weights_only=True)`` reads."""
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def _class_names(names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str) or not all(isinstance(name, str) for name in names):
        raise ValueError(
            f"Expected argument `class_names` to be a list of strings but got {names!r}."
        )
    return tuple(names)


@dataclass(frozen=True)
class FbankPipeline(InputPipeline):
    """The input pipeline of an fbank model: waveform -> normalised filterbank windows.

    Args:
        features: The filterbank settings of training (windows are computed with dither off).
        normalization: The normalisation statistics of training.
        class_names: The class names in id order.
    """

    kind: ClassVar[str] = "fbank"

    features: FbankOptions
    normalization: Normalization
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, value, expected in (
            ("features", self.features, FbankOptions),
            ("normalization", self.normalization, Normalization),
        ):
            if not isinstance(value, expected):
                raise ValueError(
                    f"Expected argument `{name}` to be a {expected.__name__} but got {value!r}."
                )
        object.__setattr__(self, "class_names", _class_names(self.class_names))

    @property
    def sample_rate(self) -> int:
        """The training rate in Hz (files are read at it)."""
        return self.features.sample_rate

    @property
    def inference_features(self) -> FbankOptions:
        """The training filterbank settings with dither off (deterministic features)."""
        return dataclasses.replace(self.features, dither=0.0)

    def clip_windows(
        self, waveform: Tensor | np.ndarray, sample_rate: int, hop_frames: int | None = None
    ) -> ClipWindows:
        """The normalised fbank windows of a waveform (steps 1-4 of the module doc), their place
        in it and their levels.

        Shape:
            - inputs: ``[W, target_frames, num_mel_bins]``, float32; lengths: ``[W]`` int64.

        Raises:
            ValueError: If the waveform is invalid or shorter than one filterbank frame, or
                ``hop_frames`` is not a positive integer.
        """
        features = self.inference_features
        target = features.target_frames
        hop = max(1, target // 2) if hop_frames is None else hop_frames
        check_int("hop_frames", hop)
        mono = to_mono(waveform, sample_rate, features.sample_rate)
        frames = compute_fbank_frames(mono, features)
        starts = window_starts(frames.shape[0], target, hop)
        windows = torch.stack(
            [pad_or_crop(frames[start : start + target], target) for start in starts]
        )
        lengths = torch.tensor([min(target, frames.shape[0] - start) for start in starts])
        # the same frames as the filterbank's (Kaldi's snip_edges), so one level per fbank frame
        levels = frame_levels(mono, features.window_samples, features.shift_samples)
        first = torch.tensor(starts, dtype=torch.float64) * features.shift_samples
        last = first + (lengths - 1) * features.shift_samples + features.window_samples
        return ClipWindows(
            inputs=self.normalization.apply(windows),
            lengths=lengths,
            start_s=first / features.sample_rate,
            end_s=last / features.sample_rate,
            level_dbfs=torch.stack(
                [levels[start : start + int(n)].max() for start, n in zip(starts, lengths)]
            ),
        )

    @classmethod
    def _from_fields(cls, state: Mapping[str, Any]) -> FbankPipeline:
        statistics = state["normalization"]
        return cls(
            features=FbankOptions(**state["features"]),
            normalization=Normalization(
                mean=float(statistics["mean"]), std=float(statistics["std"])
            ),
            class_names=[str(name) for name in state["class_names"]],
        )


@dataclass(frozen=True)
class WaveformPipeline(InputPipeline):
    """The input pipeline of a speech encoder: waveform -> the whole clip at the training rate.

    Args:
        sample_rate: The training rate in Hz (the encoder's).
        max_duration: The longest training crop in seconds (None: whole clips); clips are
            scored whole, as in evaluation.
        class_names: The class names in id order.
        min_samples: The fewest samples (at ``sample_rate``) the encoder takes (one encoder
            frame, ``HFAudioEncoder.min_samples``): the encoder's fact, not stored.

    Raises:
        ValueError: If ``sample_rate`` or ``min_samples`` is not a positive integer or
            ``max_duration`` is not None or at least one sample long.
    """

    kind: ClassVar[str] = "waveform"

    sample_rate: int
    max_duration: float | None = None
    class_names: tuple[str, ...] = ()
    min_samples: int = dataclasses.field(default=1, compare=False)

    def __post_init__(self) -> None:
        check_int("sample_rate", self.sample_rate)
        check_int("min_samples", self.min_samples)
        duration = self.max_duration
        if duration is not None and (
            isinstance(duration, bool)
            or not isinstance(duration, (int, float))
            or duration * self.sample_rate < 1
        ):
            raise ValueError(
                "Expected argument `max_duration` to be None or a positive number of seconds "
                f"(at least one sample) but got {duration!r}."
            )
        if duration is not None:
            object.__setattr__(self, "max_duration", float(duration))
        object.__setattr__(self, "class_names", _class_names(self.class_names))

    @property
    def max_samples(self) -> int | None:
        """``max_duration`` in samples (rounded down), or None."""
        if self.max_duration is None:
            return None
        return int(self.max_duration * self.sample_rate)

    def clip_windows(
        self, waveform: Tensor | np.ndarray, sample_rate: int, hop_frames: int | None = None
    ) -> ClipWindows:
        """The clip as one window (step 1 of the module doc), from 0 s to its end, and its level
        (frames of 25 ms every 10 ms).

        Shape:
            - inputs: ``[1, num_samples]`` at the training rate; lengths: ``[1]``.

        Raises:
            ValueError: If ``hop_frames`` is given (whole clips have no windows), or the
                waveform is invalid (see :func:`~add_lightning.data.audio.to_mono`) or shorter
                than ``min_samples``.
        """
        if hop_frames is not None:
            raise ValueError(
                "Expected argument `hop_frames` to be None for a waveform model, which scores "
                f"each clip whole as evaluation does, but got {hop_frames!r}."
            )
        clip = to_mono(waveform, sample_rate, self.sample_rate)
        if clip.shape[0] < self.min_samples:
            raise ValueError(
                f"Expected a clip of at least {self.min_samples} samples at {self.sample_rate} "
                f"Hz ({self.min_samples / self.sample_rate:.4f} s, one encoder frame) but got "
                f"{clip.shape[0]}."
            )
        rate, num_samples = self.sample_rate, clip.shape[0]
        levels = frame_levels(clip, int(rate * _LEVEL_FRAME_S), int(rate * _LEVEL_SHIFT_S))
        return ClipWindows(
            inputs=clip[None],
            lengths=torch.tensor([num_samples]),
            start_s=torch.zeros(1, dtype=torch.float64),
            end_s=torch.tensor([num_samples / rate], dtype=torch.float64),
            level_dbfs=levels.max()[None],
        )

    def to_state(self) -> dict[str, Any]:
        """``kind``, ``sample_rate``, ``max_duration`` and ``class_names`` (not ``min_samples``,
        which the encoder gives)."""
        state = super().to_state()
        del state["min_samples"]
        return state

    @classmethod
    def _from_fields(cls, state: Mapping[str, Any]) -> WaveformPipeline:
        duration = state.get("max_duration")
        return cls(
            sample_rate=int(state["sample_rate"]),
            max_duration=None if duration is None else float(duration),
            class_names=[str(name) for name in state["class_names"]],
        )
