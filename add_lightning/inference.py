"""A trained model with everything needed to use it on new audio.

:class:`TrainedModel` is the unit that ``classify`` and ``export`` work on: the classifier
and the feature pipeline it was trained with (filterbank settings, normalisation statistics)
and its class names in id order. :func:`load_trained_model` reads it from a checkpoint that
``add-lightning fit`` wrote (the data module stores the pipeline in every checkpoint, see
``AudioDataModule.state_dict``).

From a waveform to scores (:meth:`TrainedModel.windows`, :meth:`TrainedModel.classify`):

1. Mono and rate: the channels of a ``[channels, num_samples]`` waveform are averaged, then
   it is resampled to the training rate with ``torchaudio.functional.resample``, exactly as
   ``load_audio`` reads training files.
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
5. Scores: the clip's class probabilities are the mean of its windows' softmax
   probabilities, its embedding the mean of its windows' embeddings.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio.functional
from torch import Tensor

from add_lightning.data.datamodule import PIPELINE_KEY, parse_pipeline
from add_lightning.data.features import (
    FbankOptions,
    Normalization,
    compute_fbank_frames,
    pad_or_crop,
)
from add_lightning.models.classifier import AudioClassifier

__all__ = [
    "ClipScores",
    "TrainedModel",
    "load_trained_model",
    "to_mono",
    "waveform_windows",
    "window_starts",
]


@dataclass
class ClipScores:
    """The scores of one clip (the mean over its windows).

    Args:
        probabilities: Class probabilities, ``[C]`` float32, summing to 1.
        embedding: Mean backbone embedding of the windows, ``[D]`` float32.
        num_windows: Number of windows the clip was cut into.
    """

    probabilities: Tensor
    embedding: Tensor
    num_windows: int


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
    for name, rate in (("sample_rate", sample_rate), ("target_rate", target_rate)):
        if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
            raise ValueError(
                f"Expected argument `{name}` to be a positive integer but got {rate!r}."
            )
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
    target = features.target_frames
    hop = max(1, target // 2) if hop_frames is None else hop_frames
    if isinstance(hop, bool) or not isinstance(hop, int) or hop < 1:
        raise ValueError(
            f"Expected argument `hop_frames` to be a positive integer but got {hop_frames!r}."
        )
    frames = compute_fbank_frames(to_mono(waveform, sample_rate, features.sample_rate), features)
    starts = window_starts(frames.shape[0], target, hop)
    windows = torch.stack([pad_or_crop(frames[start : start + target], target) for start in starts])
    windows = normalization.apply(windows)
    if not return_num_frames:
        return windows
    num_frames = torch.tensor([min(target, frames.shape[0] - start) for start in starts])
    return windows, num_frames


@dataclass
class TrainedModel:
    """A classifier and the feature pipeline it was trained with.

    Args:
        model: The classifier, in eval mode.
        features: The filterbank settings of training.
        normalization: The normalisation statistics of training.
        class_names: Class names in id order (``len == model.num_classes``).
    """

    model: AudioClassifier
    features: FbankOptions
    normalization: Normalization
    class_names: list[str]

    def __post_init__(self) -> None:
        if len(self.class_names) != self.model.num_classes:
            raise ValueError(
                f"Expected {self.model.num_classes} `class_names` (one per class of the model) "
                f"but got {len(self.class_names)}."
            )

    @property
    def inference_features(self) -> FbankOptions:
        """The training filterbank settings with dither off (deterministic features)."""
        return dataclasses.replace(self.features, dither=0.0)

    def windows(
        self, waveform: Tensor | np.ndarray, sample_rate: int, hop_frames: int | None = None
    ) -> Tensor:
        """The model's normalised input windows of a waveform (steps 1-4 of the module doc).

        Args:
            waveform: ``[num_samples]`` or ``[channels, num_samples]`` at ``sample_rate``.
            sample_rate: Rate of ``waveform`` in Hz (any; resampled to the training rate).
            hop_frames: Frames between window starts of a long clip; None means
                ``target_frames // 2``.

        Shape:
            - Output: ``[num_windows, target_frames, num_mel_bins]``, float32.

        Raises:
            ValueError: If the waveform is invalid or shorter than one filterbank frame.
        """
        return waveform_windows(
            waveform, sample_rate, self.inference_features, self.normalization, hop_frames
        )

    @torch.no_grad()
    def score_windows(
        self, windows: Tensor, batch_size: int = 32, num_frames: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Softmax probabilities and embeddings of normalised windows, ``batch_size`` at a time.

        ``num_frames`` (valid frames of each window, None = all) masks the padding for a
        backbone that takes a padding mask (see ``AudioClassifier.embed``).

        Shape:
            - windows: ``[W, target_frames, num_mel_bins]``; num_frames: ``[W]``.
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
    ) -> ClipScores:
        """Class probabilities and embedding of one clip: the mean over its windows.

        Args:
            waveform: ``[num_samples]`` or ``[channels, num_samples]`` at ``sample_rate``.
            sample_rate: Rate of ``waveform`` in Hz.
            hop_frames: See :meth:`windows`.
            batch_size: Windows per forward pass.
        """
        windows, num_frames = waveform_windows(
            waveform,
            sample_rate,
            self.inference_features,
            self.normalization,
            hop_frames,
            return_num_frames=True,
        )
        probabilities, embeddings = self.score_windows(windows, batch_size, num_frames)
        return ClipScores(probabilities.mean(dim=0), embeddings.mean(dim=0), windows.shape[0])


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
    a backbone trained from pretrained weights (an AST hub id or folder, a BEATs file) is stored
    as its architecture (see ``AudioClassifier.on_save_checkpoint``), so it is rebuilt with
    random weights that the checkpoint's overwrite; nothing is downloaded or read besides
    ``path``.

    Args:
        path: The ``.ckpt`` file.
        map_location: Device for the weights.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not a checkpoint, or holds no feature pipeline (written by an
            older version or not by ``add-lightning fit``), or no model hyperparameters.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise ValueError(
            f"Checkpoint {path} is not a PyTorch checkpoint (empty, damaged or of another format)."
        )
    # mmap: only the small entries are read here; load_from_checkpoint reads the weights.
    checkpoint = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    pipeline = _find_pipeline(checkpoint)
    if pipeline is None:
        raise ValueError(
            f"Checkpoint {path} holds no feature pipeline (feature settings, normalisation "
            "statistics, class names): it was written by an older add-lightning or not by "
            "`add-lightning fit` with an AudioDataModule. Evaluate it with `add-lightning test "
            "--config <its config.yaml> --ckpt_path ...`, or train it again to classify files."
        )
    if not checkpoint.get("hyper_parameters"):
        raise ValueError(
            f"Checkpoint {path} holds no model hyperparameters, so the model cannot be rebuilt; "
            "expected a checkpoint written by `add-lightning fit`."
        )
    if isinstance(pipeline, dict) and "waveform" in pipeline:
        raise ValueError(
            f"Checkpoint {path} is a waveform model (trained with WaveformDataModule, e.g. a "
            "speech encoder); classify and export take fbank models only. Score files with "
            "`add-lightning predict --config <its config.yaml> --ckpt_path ...` on a data set "
            "of them (e.g. FolderDataset) instead."
        )
    features, normalization, class_names = parse_pipeline(pipeline, f"checkpoint {path}")
    del checkpoint
    model = AudioClassifier.load_from_checkpoint(path, map_location=map_location)
    model.eval()
    if model.class_names is not None and list(model.class_names) != class_names:
        raise ValueError(
            f"Checkpoint {path} is inconsistent: the model's class names "
            f"{list(model.class_names)[:5]}... differ from the data's {class_names[:5]}...."
        )
    return TrainedModel(model, features, normalization, class_names)
