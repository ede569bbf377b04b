"""A trained model with everything needed to use it on new audio.

:class:`TrainedModel` is the unit that ``classify`` and ``export`` work on: the classifier and
the input pipeline it was trained with (:attr:`TrainedModel.pipeline`, an
:class:`~add_lightning.data.pipeline.FbankPipeline` or
:class:`~add_lightning.data.pipeline.WaveformPipeline`, which holds the class names in id
order). :func:`load_trained_model` reads both from a checkpoint that ``add-lightning fit``
wrote (the pipeline is stored under :data:`~add_lightning.checkpoint.PIPELINE_KEY`).

From a waveform to scores (:meth:`TrainedModel.classify`): steps 1-4, the model's input
windows, their valid lengths and levels, are the pipeline's
(:meth:`~add_lightning.data.pipeline.InputPipeline.clip_windows`, described in
:mod:`add_lightning.data.pipeline`). Several clips in one forward pass are zero-padded to the
longest (:func:`concat_inputs`) with their valid lengths, which give backbones that take a
padding mask (BEATs, speech encoders) the mask, so a clip's scores do not depend on the clips
batched with it.

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

import numpy as np
import torch
from torch import Tensor

from add_lightning.checkpoint import load_checkpoint, stored_pipeline
from add_lightning.checks import check_weight
from add_lightning.data.pipeline import InputPipeline, WaveformPipeline
from add_lightning.models.classifier import AudioClassifier
from add_lightning.workarounds import module_from_checkpoint

__all__ = [
    "POOLINGS",
    "SILENCE_BELOW_PEAK_DB",
    "SILENCE_FLOOR_DBFS",
    "ClipScores",
    "TrainedModel",
    "concat_inputs",
    "load_trained_model",
    "pool_windows",
    "silent_windows",
]

SILENCE_BELOW_PEAK_DB = 30.0
"""A window more than this many dB below its clip's loudest window is silent (step 5)."""
SILENCE_FLOOR_DBFS = -80.0
"""A window below this level (dBFS) is silent whatever its clip's peak (step 5)."""
POOLINGS = ("mean", "max")
"""How the non-silent windows' probabilities make the clip's (step 6)."""


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


@dataclass
class TrainedModel:
    """A classifier and the input pipeline it was trained with.

    Args:
        model: The classifier, in eval mode.
        pipeline: The input pipeline of training, with the class names in id order.

    Raises:
        ValueError: If the pipeline's class names do not match the model's classes.
    """

    model: AudioClassifier
    pipeline: InputPipeline

    def __post_init__(self) -> None:
        if len(self.pipeline.class_names) != self.model.num_classes:
            raise ValueError(
                f"Expected {self.model.num_classes} class names in the pipeline (one per class "
                f"of the model) but got {len(self.pipeline.class_names)}."
            )

    @property
    def class_names(self) -> list[str]:
        """The class names in id order."""
        return list(self.pipeline.class_names)

    def windows(
        self, waveform: Tensor | np.ndarray, sample_rate: int, hop_frames: int | None = None
    ) -> Tensor:
        """The model's input windows of a waveform (the pipeline's, steps 1-4).

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
    # the one read of the file: mapped, so that the weights are read as the model takes them
    # (and the optimizer's states, which a training checkpoint holds too, not at all)
    checkpoint = load_checkpoint(path, mmap=True)
    pipeline = stored_pipeline(checkpoint, f"checkpoint {path}")
    if pipeline is None:
        raise ValueError(
            f"Checkpoint {path} holds no feature pipeline (feature settings, normalisation "
            "statistics or waveform settings, class names): it was written by an older "
            "add-lightning, with `save_weights_only`, or not by `add-lightning fit` with an "
            "AudioDataModule. Evaluate it with `add-lightning test --config <its config.yaml> "
            "--ckpt_path ...`, or train it again to classify files."
        )
    if not checkpoint.get("hyper_parameters"):
        raise ValueError(
            f"Checkpoint {path} holds no model hyperparameters, so the model cannot be rebuilt; "
            "expected a checkpoint written by `add-lightning fit`."
        )
    model = module_from_checkpoint(AudioClassifier, checkpoint, f"Checkpoint {path}")
    del checkpoint  # the model holds copies of the weights: unmap the file
    model.to(map_location).eval()
    class_names = list(pipeline.class_names)
    if model.class_names is not None and list(model.class_names) != class_names:
        raise ValueError(
            f"Checkpoint {path} is inconsistent: the model's class names "
            f"{list(model.class_names)[:5]}... differ from the data's {class_names[:5]}...."
        )
    if isinstance(pipeline, WaveformPipeline):
        backbone_rate = model.backbone.sample_rate
        if backbone_rate not in (None, pipeline.sample_rate):
            raise ValueError(
                f"Checkpoint {path} is inconsistent: its encoder takes {backbone_rate} Hz but "
                f"the data was read at {pipeline.sample_rate} Hz."
            )
        pipeline = dataclasses.replace(pipeline, min_samples=model.backbone.min_samples)
    return TrainedModel(model, pipeline)
