"""A trained model with everything needed to use it on new audio.

:class:`TrainedModel` is the unit that ``classify`` and ``export`` work on: the classifier,
the input pipeline it was trained with and its class names in id order. The pipeline is one
of two kinds (:attr:`TrainedModel.pipeline`, each with one method ``inputs`` turning a
waveform into the model's inputs and their valid lengths):

- :class:`FbankPipeline`, for models trained on filterbanks (AST, BEATs; ``AudioDataModule``):
  the filterbank settings and normalisation statistics (``TrainedModel.features`` and
  ``.normalization``).
- :class:`WaveformPipeline`, for speech encoders trained on raw waveforms (``HFAudioEncoder``;
  ``WaveformDataModule``): the sample rate (``TrainedModel.waveform``).

:func:`load_trained_model` reads it from a checkpoint that ``add-lightning fit`` wrote (the
data module stores the pipeline in every checkpoint, see ``AudioDataModule.state_dict`` and
``WaveformDataModule.state_dict``).

From a waveform to scores (:meth:`TrainedModel.windows`, :meth:`TrainedModel.classify`):

1. Mono and rate: the channels of a ``[channels, num_samples]`` waveform are averaged, then
   it is resampled to the training rate with ``torchaudio.functional.resample``, exactly as
   ``load_audio`` reads training files.

Fbank models:

2. Filterbank: ``compute_fbank_frames`` with the training settings, dither off (so the scores
   of a file are the same on every call).
3. Windows: a clip of at most ``target_frames`` frames is zero-padded to ``target_frames``
   as in training (one window). A longer clip is cut into windows of ``target_frames``
   frames starting every ``hop_frames`` frames (default ``target_frames // 2``), plus one
   window ending at the last frame when the hops do not reach it, so every frame is covered
   and no window is padded. Each window's valid (unpadded) frame count goes to the model
   with it, so a backbone that takes a padding mask (BEATs) ignores the padding, as in
   training.
4. Each window is normalised with the training statistics (``Normalization.apply``).

Waveform models score a clip as evaluation does (``WaveformDataModule``'s evaluation clips
are whole and unaugmented): the whole mono waveform of step 1 is one window, whatever its
length (``hop_frames`` does not apply); the encoder applies its own input normalisation.
Several clips in one forward pass are zero-padded to the longest with the padding mask passed
to the encoder, which encodes each clip as alone (see ``HFAudioEncoder``), so a clip's scores
do not depend on the clips batched with it.

Both kinds, from the windows' scores to the clip's (:func:`silent_windows`,
:func:`pool_windows`):

5. Silence: a window's level is the RMS level of its loudest frame (the filterbank's frames,
   25 ms every 10 ms for a waveform model; each frame's mean removed, as the filterbank
   removes it), in dBFS (``20 log10 RMS``, samples in [-1, 1]; digital silence reads -200).
   A window is silent when its level is more than ``SILENCE_BELOW_PEAK_DB`` (30) dB below
   the clip's loudest window, or below ``SILENCE_FLOOR_DBFS`` (-80 dBFS) whatever the clip's
   peak. 30 dB: the loudest frames of speech or of a sound event lie 30-50 dB above the room
   noise of an everyday recording, so the pauses between takes fall under it (a noisier one
   needs a smaller value), while a window that holds any part of an event holds a frame near
   the event's level and stays. -80 dBFS: digital silence and 16-bit dither noise (about
   -98 dBFS), but no recorded sound. The rule is relative to the clip, so a clip of room
   noise alone is not silent (it is its own loudest part).
6. Pooling: the clip's class probabilities are the mean (default) or the per-class maximum
   of its non-silent windows' softmax probabilities, its embedding the mean of their
   embeddings. A clip whose every window is silent has none: it is reported as silent.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio.functional
from torch import Tensor

from add_lightning.checkpoint import load_checkpoint
from add_lightning.checks import check_int, check_weight
from add_lightning.data.datamodule import PIPELINE_KEY, parse_pipeline
from add_lightning.data.fbank import FbankOptions, compute_fbank_frames, pad_or_crop
from add_lightning.data.normalization import Normalization
from add_lightning.data.waveform_datamodule import parse_waveform_pipeline
from add_lightning.models.classifier import AudioClassifier

__all__ = [
    "POOLINGS",
    "SILENCE_BELOW_PEAK_DB",
    "SILENCE_FLOOR_DBFS",
    "ClipScores",
    "ClipWindows",
    "FbankPipeline",
    "TrainedModel",
    "WaveformPipeline",
    "concat_inputs",
    "frame_levels",
    "load_trained_model",
    "pool_windows",
    "silent_windows",
    "to_mono",
    "waveform_windows",
    "window_starts",
]

SILENCE_BELOW_PEAK_DB = 30.0
"""A window more than this many dB below its clip's loudest window is silent (step 5)."""
SILENCE_FLOOR_DBFS = -80.0
"""A window below this level (dBFS) is silent whatever its clip's peak (step 5)."""
POOLINGS = ("mean", "max")
"""How the non-silent windows' probabilities make the clip's (step 6)."""
_DIGITAL_SILENCE_DBFS = -200.0  # the level of an all-zero frame, instead of -inf
# Frames of the levels of a waveform model's clip, which has no filterbank: Kaldi's defaults.
_LEVEL_FRAME_S, _LEVEL_SHIFT_S = 0.025, 0.010


@dataclass
class ClipScores:
    """The scores of one clip: its non-silent windows pooled (steps 5-6 of the module doc).

    Args:
        probabilities: Class probabilities, ``[C]`` float32 (summing to 1 with mean pooling;
            each class's highest window probability with max pooling); None when every
            window is silent.
        embedding: Mean backbone embedding of the non-silent windows, ``[D]`` float32; None
            when every window is silent.
        num_windows: Number of windows the clip was cut into.
        num_silent_windows: How many of them are silent (left out of the scores).
        window_probabilities: Every window's softmax probabilities, ``[W, C]``, silent ones
            included.
        silent: Which windows are silent, ``[W]`` bool.
    """

    probabilities: Tensor | None
    embedding: Tensor | None
    num_windows: int
    num_silent_windows: int = 0
    window_probabilities: Tensor | None = None
    silent: Tensor | None = None

    @property
    def is_silent(self) -> bool:
        """Whether every window of the clip is silent (it then has no scores)."""
        return self.probabilities is None


@dataclass
class ClipWindows:
    """The model's input windows of one clip, where they lie in it and how loud they are.

    Args:
        inputs: The windows (fbank: normalised; waveform model: the clip).
        lengths: Valid (unpadded) frames of each window (waveform model: samples).
        start_s: Where each window starts in the clip, in seconds.
        end_s: Where each window ends: the end of its last valid frame (waveform model: of
            the clip).
        level_dbfs: The RMS level of each window's loudest frame in dBFS (step 5 of the
            module doc).

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
    """RMS level in dBFS of each frame of a mono waveform, its mean removed (step 5).

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


def silent_windows(
    level_dbfs: Tensor,
    below_peak_db: float | None = SILENCE_BELOW_PEAK_DB,
    floor_dbfs: float = SILENCE_FLOOR_DBFS,
) -> Tensor:
    """Which windows of a clip are silent (step 5 of the module doc).

    Args:
        level_dbfs: Each window's level (:attr:`ClipWindows.level_dbfs`).
        below_peak_db: A window more than this many dB below the clip's loudest window is
            silent; None: no window is silent (the floor does not apply either).
        floor_dbfs: A window below this level is silent whatever the clip's peak.

    Shape:
        - level_dbfs: ``[W]``. Output: ``[W]`` bool.

    Raises:
        ValueError: If ``below_peak_db`` is negative or not finite.
    """
    if below_peak_db is None:
        return torch.zeros(level_dbfs.shape, dtype=torch.bool)
    check_weight("below_peak_db", below_peak_db)
    return level_dbfs < max(float(level_dbfs.max()) - below_peak_db, floor_dbfs)


def pool_windows(
    probabilities: Tensor, embeddings: Tensor, silent: Tensor, pooling: str = "mean"
) -> tuple[Tensor | None, Tensor | None]:
    """A clip's probabilities and embedding from its non-silent windows' (step 6).

    Args:
        probabilities: The windows' softmax probabilities.
        embeddings: The windows' embeddings.
        silent: Which windows to leave out (:func:`silent_windows`).
        pooling: ``"mean"``: the mean probabilities; ``"max"``: each class's highest
            probability (these do not sum to 1). The embedding is the mean either way.

    Shape:
        - probabilities: ``[W, C]``; embeddings: ``[W, D]``; silent: ``[W]`` bool.
        - Output: ``([C], [D])``, or ``(None, None)`` when every window is silent.

    Raises:
        ValueError: If ``pooling`` is not one of ``POOLINGS``.
    """
    if pooling not in POOLINGS:
        raise ValueError(
            f"Expected argument `pooling` to be one of {POOLINGS} but got {pooling!r}."
        )
    kept = ~silent
    if not bool(kept.any()):
        return None, None
    scores = probabilities[kept]
    pooled = scores.mean(dim=0) if pooling == "mean" else scores.amax(dim=0)
    return pooled, embeddings[kept].mean(dim=0)


def to_mono(waveform: Tensor | np.ndarray, sample_rate: int, target_rate: int) -> Tensor:
    """A mono float32 waveform at ``target_rate``: channels averaged, then resampled.

    The same steps, in the same order, as ``load_audio`` applies to a file.

    Args:
        waveform: ``[num_samples]`` or ``[channels, num_samples]`` (torchaudio's layout).
        sample_rate: Rate of ``waveform`` in Hz.
        target_rate: Rate of the output in Hz.

    Shape:
        - Output: ``[ceil(num_samples * target_rate / sample_rate)]``.

    Raises:
        ValueError: If the waveform is not 1-D or 2-D, is empty, holds non-finite samples, or
            a rate is not a positive integer.
    """
    check_int("sample_rate", sample_rate)
    check_int("target_rate", target_rate)
    waveform = torch.as_tensor(waveform)
    if waveform.dim() not in (1, 2) or waveform.shape[-1] == 0 or waveform.numel() == 0:
        raise ValueError(
            "Expected argument `waveform` to be [num_samples] or [channels, num_samples] with at "
            f"least one sample but got shape {tuple(waveform.shape)}."
        )
    waveform = waveform.to(torch.float32)
    if waveform.dim() == 2:
        waveform = waveform.mean(dim=0) if waveform.shape[0] > 1 else waveform[0]
    if not torch.isfinite(waveform).all():
        raise ValueError("Expected argument `waveform` to hold finite samples (no NaN or inf).")
    if sample_rate != target_rate:
        waveform = torchaudio.functional.resample(waveform, sample_rate, target_rate)
    return waveform


def window_starts(num_frames: int, target_frames: int, hop_frames: int) -> list[int]:
    """First frames of the windows of a clip of ``num_frames`` frames (rule in the module doc).

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


def waveform_windows(
    waveform: Tensor | np.ndarray,
    sample_rate: int,
    features: FbankOptions,
    normalization: Normalization,
    hop_frames: int | None = None,
    return_num_frames: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Normalised input windows of a waveform (steps 1-4 of the module doc).

    Args:
        waveform: ``[num_samples]`` or ``[channels, num_samples]`` at ``sample_rate``.
        sample_rate: Rate of ``waveform`` in Hz (any; resampled to ``features.sample_rate``).
        features: Filterbank settings (``target_frames`` is the window length).
        normalization: Statistics applied to every window.
        hop_frames: Frames between window starts of a long clip; None means
            ``target_frames // 2``.
        return_num_frames: Also return each window's valid frames (the rest is padding).

    Shape:
        - Output: ``[num_windows, target_frames, num_mel_bins]``, float32; with
          ``return_num_frames``, also ``[num_windows]`` int64.

    Raises:
        ValueError: If the waveform is invalid or shorter than one filterbank frame, or
            ``hop_frames`` is not a positive integer.
    """
    clip = FbankPipeline(features, normalization).clip_windows(waveform, sample_rate, hop_frames)
    return (clip.inputs, clip.lengths) if return_num_frames else clip.inputs


def concat_inputs(inputs: Sequence[Tensor]) -> Tensor:
    """The inputs of several clips as one batch: concatenated along dim 0, zero-padded at the end
    of dim 1 to the longest.

    Fbank windows all have ``target_frames`` frames (a plain concatenation); waveforms are
    padded to the longest clip, their valid lengths giving the padding mask.

    Shape:
        - inputs: ``[W_i, N_i, ...]`` each, the trailing dimensions equal
        - output: ``[sum W_i, max N_i, ...]``
    """
    if not inputs:
        raise ValueError("Expected the inputs of at least one clip but got none.")
    longest = max(item.shape[1] for item in inputs)
    first = inputs[0]
    batch = first.new_zeros((sum(item.shape[0] for item in inputs), longest, *first.shape[2:]))
    offset = 0
    for item in inputs:
        batch[offset : offset + item.shape[0], : item.shape[1]] = item
        offset += item.shape[0]
    return batch


@dataclass(frozen=True)
class FbankPipeline:
    """The input pipeline of an fbank model: waveform -> normalised filterbank windows.

    Args:
        features: The filterbank settings (use the training settings with dither off, as
            :attr:`TrainedModel.inference_features`, for deterministic scores).
        normalization: The normalisation statistics of training.
    """

    features: FbankOptions
    normalization: Normalization

    @property
    def sample_rate(self) -> int:
        """The training rate in Hz (files are read at it)."""
        return self.features.sample_rate

    def clip_windows(
        self, waveform: Tensor | np.ndarray, sample_rate: int, hop_frames: int | None = None
    ) -> ClipWindows:
        """The model's windows of a waveform (steps 1-4 of the module doc), their place in it
        and their levels (step 5).

        Raises:
            ValueError: See :func:`waveform_windows`.
        """
        features = self.features
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

    def inputs(
        self, waveform: Tensor | np.ndarray, sample_rate: int, hop_frames: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """The model's windows of a waveform and their valid frames (steps 1-4 of the module doc).

        Shape:
            - Output: ``([num_windows, target_frames, num_mel_bins], [num_windows])``.

        Raises:
            ValueError: See :func:`waveform_windows`.
        """
        clip = self.clip_windows(waveform, sample_rate, hop_frames)
        return clip.inputs, clip.lengths


@dataclass(frozen=True)
class WaveformPipeline:
    """The input pipeline of a speech encoder: waveform -> the whole clip at the training rate.

    Args:
        sample_rate: The training rate in Hz (the encoder's).
        max_duration: The longest training crop in seconds (None: whole clips); for information
            only, since clips are scored whole as in evaluation.
        min_samples: The fewest samples (at ``sample_rate``) the encoder takes (one encoder
            frame, ``HFAudioEncoder.min_samples``).

    Raises:
        ValueError: If ``sample_rate`` or ``min_samples`` is not a positive integer or
            ``max_duration`` is not None or positive.
    """

    sample_rate: int
    max_duration: float | None = None
    min_samples: int = 1

    def __post_init__(self) -> None:
        check_int("sample_rate", self.sample_rate)
        check_int("min_samples", self.min_samples)
        duration = self.max_duration
        if duration is not None and (
            isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration <= 0
        ):
            raise ValueError(
                f"Expected argument `max_duration` to be None or positive but got {duration!r}."
            )

    def inputs(
        self, waveform: Tensor | np.ndarray, sample_rate: int, hop_frames: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """The clip as one window (step 1 of the module doc) and its number of samples.

        Shape:
            - Output: ``([1, num_samples], [1])``, ``num_samples`` at the training rate.

        Raises:
            ValueError: If ``hop_frames`` is given (whole clips have no windows), or the
                waveform is invalid (see :func:`to_mono`) or shorter than ``min_samples``.
        """
        clip = self.clip_windows(waveform, sample_rate, hop_frames)
        return clip.inputs, clip.lengths

    def clip_windows(
        self, waveform: Tensor | np.ndarray, sample_rate: int, hop_frames: int | None = None
    ) -> ClipWindows:
        """The clip as one window (see :meth:`inputs`), from 0 s to its end, and its level
        (step 5 of the module doc, frames of 25 ms every 10 ms).

        Raises:
            ValueError: As :meth:`inputs`.
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


@dataclass
class TrainedModel:
    """A classifier and the input pipeline it was trained with.

    An fbank model has ``features`` and ``normalization`` and no ``waveform``; a waveform
    model (a speech encoder) has ``waveform`` and neither of the others.

    Args:
        model: The classifier, in eval mode.
        features: The filterbank settings of training; None for a waveform model.
        normalization: The normalisation statistics of training; None for a waveform model.
        class_names: Class names in id order (``len == model.num_classes``).
        waveform: The waveform pipeline of a waveform model; None for an fbank model.

    Raises:
        ValueError: If the class names do not match the model, or the pipeline is neither
            ``features`` and ``normalization`` nor ``waveform``.
    """

    model: AudioClassifier
    features: FbankOptions | None
    normalization: Normalization | None
    class_names: list[str]
    waveform: WaveformPipeline | None = None

    def __post_init__(self) -> None:
        if len(self.class_names) != self.model.num_classes:
            raise ValueError(
                f"Expected {self.model.num_classes} `class_names` (one per class of the model) "
                f"but got {len(self.class_names)}."
            )
        fbank = (self.features is not None, self.normalization is not None)
        if fbank != ((False, False) if self.waveform is not None else (True, True)):
            raise ValueError(
                "Expected either `features` and `normalization` (an fbank model) or `waveform` "
                "(a waveform model) but got "
                f"features={self.features is not None}, "
                f"normalization={self.normalization is not None}, "
                f"waveform={self.waveform is not None}."
            )

    @property
    def pipeline(self) -> FbankPipeline | WaveformPipeline:
        """The input pipeline: waveform -> the model's inputs (fbank: with dither off)."""
        if self.waveform is not None:
            return self.waveform
        return FbankPipeline(self.inference_features, self.normalization)

    @property
    def inference_features(self) -> FbankOptions:
        """The training filterbank settings with dither off (deterministic features).

        Raises:
            ValueError: For a waveform model, which has no filterbank.
        """
        if self.features is None:
            raise ValueError("A waveform model has no filterbank settings.")
        return dataclasses.replace(self.features, dither=0.0)

    def windows(
        self, waveform: Tensor | np.ndarray, sample_rate: int, hop_frames: int | None = None
    ) -> Tensor:
        """The model's input windows of a waveform (steps 1-4 of the module doc).

        Args:
            waveform: ``[num_samples]`` or ``[channels, num_samples]`` at ``sample_rate``.
            sample_rate: Rate of ``waveform`` in Hz (any; resampled to the training rate).
            hop_frames: Frames between window starts of a long clip; None means
                ``target_frames // 2``. Fbank models only.

        Shape:
            - Output: ``[num_windows, target_frames, num_mel_bins]``, float32 (normalised);
              waveform model: ``[1, num_samples]`` at the training rate.

        Raises:
            ValueError: If the waveform is invalid or shorter than one filterbank frame, or
                ``hop_frames`` is given for a waveform model.
        """
        return self.pipeline.inputs(waveform, sample_rate, hop_frames)[0]

    @torch.no_grad()
    def score_windows(
        self, windows: Tensor, batch_size: int = 32, num_frames: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Softmax probabilities and embeddings of input windows, ``batch_size`` at a time.

        ``num_frames`` (valid frames of each window, None = all) masks the padding for a
        backbone that takes a padding mask (BEATs, speech encoders; see
        ``AudioClassifier.embed``). For a waveform model the windows are zero-padded clips
        (:func:`concat_inputs`) and ``num_frames`` their valid samples.

        Shape:
            - windows: ``[W, target_frames, num_mel_bins]`` (waveforms: ``[W, N]``);
              num_frames: ``[W]``.
            - Output: ``([W, C], [W, D])``, float32 on the CPU.

        Raises:
            FloatingPointError: If the model gives non-finite logits.
        """
        device = next(self.model.parameters()).device
        probabilities, embeddings = [], []
        counts = [None] * len(windows) if num_frames is None else num_frames.split(batch_size)
        for batch, count in zip(windows.split(batch_size), counts):
            embedding = self.model.embed(
                batch.to(device), num_frames=None if count is None else count.to(device)
            )
            logits = self.model.head(embedding).float()
            if not torch.isfinite(logits).all():
                raise FloatingPointError("The model gives non-finite logits for these windows.")
            probabilities.append(logits.softmax(dim=-1).cpu())
            embeddings.append(embedding.float().cpu())
        return torch.cat(probabilities), torch.cat(embeddings)

    def classify(
        self,
        waveform: Tensor | np.ndarray,
        sample_rate: int,
        hop_frames: int | None = None,
        batch_size: int = 32,
        pooling: str = "mean",
        silence_db: float | None = SILENCE_BELOW_PEAK_DB,
    ) -> ClipScores:
        """Class probabilities and embedding of one clip from its non-silent windows (steps
        1-6 of the module doc).

        Args:
            waveform: ``[num_samples]`` or ``[channels, num_samples]`` at ``sample_rate``.
            sample_rate: Rate of ``waveform`` in Hz.
            hop_frames: See :meth:`windows`.
            batch_size: Windows per forward pass.
            pooling: ``"mean"`` or ``"max"`` (see :func:`pool_windows`).
            silence_db: Windows more than this many dB below the clip's loudest (or below
                ``SILENCE_FLOOR_DBFS``) are left out; None keeps every window (see
                :func:`silent_windows`).

        Raises:
            ValueError: If the waveform, ``pooling`` or ``silence_db`` is invalid.
        """
        clip = self.pipeline.clip_windows(waveform, sample_rate, hop_frames)
        silent = silent_windows(clip.level_dbfs, silence_db)
        probabilities, embeddings = self.score_windows(clip.inputs, batch_size, clip.lengths)
        pooled, embedding = pool_windows(probabilities, embeddings, silent, pooling)
        return ClipScores(pooled, embedding, len(silent), int(silent.sum()), probabilities, silent)


def _find_pipeline(checkpoint: dict[str, Any]) -> Any:
    """The stored pipeline: under the data module's class name (any AudioDataModule subclass)."""
    for value in checkpoint.values():
        if isinstance(value, dict) and PIPELINE_KEY in value:
            return value[PIPELINE_KEY]
    return None


def load_trained_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> TrainedModel:
    """Reads a checkpoint written by ``add-lightning fit`` into a :class:`TrainedModel`.

    The model is rebuilt from the hyperparameters stored in the checkpoint (its config under
    LightningCLI), its weights loaded, and put in eval mode. The checkpoint is self-contained:
    a backbone trained from pretrained weights (an AST hub id or folder, a BEATs file, a speech
    encoder's hub id or ``save_pretrained`` folder) is stored as its architecture (see
    ``AudioClassifier.on_save_checkpoint``), so it is rebuilt with random weights that the
    checkpoint's overwrite; nothing is downloaded or read besides ``path``.

    Args:
        path: The ``.ckpt`` file.
        map_location: Device for the weights.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not a checkpoint that loads with ``weights_only=True`` (see
            :func:`~add_lightning.checkpoint.load_checkpoint`), or holds no input pipeline
            (written by an older version or not by ``add-lightning fit``), or no model
            hyperparameters, or its parts disagree.
    """
    path = Path(path)
    # mmap: only the small entries are read here; load_from_checkpoint reads the weights.
    checkpoint = load_checkpoint(path, mmap=True)
    pipeline = _find_pipeline(checkpoint)
    if pipeline is None:
        raise ValueError(
            f"Checkpoint {path} holds no feature pipeline (feature settings, normalisation "
            "statistics or waveform settings, class names): it was written by an older "
            "add-lightning or not by `add-lightning fit` with an AudioDataModule. Evaluate it "
            "with `add-lightning test --config <its config.yaml> --ckpt_path ...`, or train it "
            "again to classify files."
        )
    if not checkpoint.get("hyper_parameters"):
        raise ValueError(
            f"Checkpoint {path} holds no model hyperparameters, so the model cannot be rebuilt; "
            "expected a checkpoint written by `add-lightning fit`."
        )
    if isinstance(pipeline, dict) and "waveform" in pipeline:
        rate, max_duration, class_names = parse_waveform_pipeline(pipeline, f"checkpoint {path}")
        waveform = WaveformPipeline(rate, max_duration)
        features = normalization = None
    else:
        features, normalization, class_names = parse_pipeline(pipeline, f"checkpoint {path}")
        waveform = None
    del checkpoint
    model = AudioClassifier.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    model.eval()
    if model.class_names is not None and list(model.class_names) != class_names:
        raise ValueError(
            f"Checkpoint {path} is inconsistent: the model's class names "
            f"{list(model.class_names)[:5]}... differ from the data's {class_names[:5]}...."
        )
    if waveform is not None:
        backbone_rate = getattr(model.backbone, "sample_rate", None)
        if backbone_rate not in (None, waveform.sample_rate):
            raise ValueError(
                f"Checkpoint {path} is inconsistent: its encoder takes {backbone_rate} Hz but "
                f"the data was read at {waveform.sample_rate} Hz."
            )
        minimum = getattr(model.backbone, "min_samples", 1)
        waveform = dataclasses.replace(waveform, min_samples=minimum)
    return TrainedModel(model, features, normalization, class_names, waveform)
