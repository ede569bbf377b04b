"""The waveform mode of the data pipeline, for encoders that take raw audio (wav2vec 2.0, ...)."""

from __future__ import annotations

import dataclasses
from typing import Any

from add_lightning.data.augment import Mixup
from add_lightning.data.clip_dataset import ClipDataset
from add_lightning.data.datamodule import AudioDataModule
from add_lightning.data.datasets.base import AudioDatasetIndex, Split
from add_lightning.data.pipeline import InputPipeline, WaveformPipeline
from add_lightning.data.sampler import ClassBalancedBatches
from add_lightning.data.waveform_dataset import WaveformClipDataset, collate_waveforms

__all__ = ["WaveformDataModule"]


class WaveformDataModule(AudioDataModule):
    """Batches of variable-length waveforms: ``{"features": [B, N], "padding_mask": [B, N], ...}``.

    Same datasets, folds, validation hold-out, samplers and seeding as
    :class:`AudioDataModule`; instead of fixed-size fbanks each batch holds the clips'
    waveforms zero-padded to the longest one, with ``padding_mask`` (True = padding) and
    ``lengths`` (see :func:`~add_lightning.data.waveform_dataset.collate_waveforms`). Training
    clips longer than ``max_duration`` are randomly cropped to it; evaluation clips are whole.
    There is no fbank, no feature cache and no normalisation statistic: the backbone applies
    its encoder's own input normalisation (``HFAudioEncoder``). Checkpoints store the sample
    rate, ``max_duration`` and the class names.

    Args:
        dataset: The dataset index (``class_path`` in YAML), e.g. ``IEMOCAP``.
        fold: The held-out fold, one of ``dataset.folds``; ``None`` for split-based datasets.
        sample_rate: Rate the waveforms are read (resampled) at; the encoder's rate.
        max_duration: Longest training crop in seconds; ``None`` trains on whole clips.
        mixup: Mixup of training clips' waveforms (``class_path: add_lightning.data.Mixup``);
            ``None`` mixes nothing.
        batch_size: Batch size (evaluation, and training unless ``train_batches``).
        num_workers: DataLoader worker processes.
        train_batches: ``ClassBalancedBatches(P, K)`` class-balanced training batches, as in
            AudioDataModule; ``None`` shuffles.
        val_fraction: Fraction in [0, 1) of the training clips held out for validation.
        seed: Seed of shuffling, validation hold-out, crops and mixup.
        predict_split: The split ``predict_dataloader`` serves.
        pin_memory: Pin batches in page-locked memory (for GPU training).
        allow_duplicate_audio: Train even when a validation or test clip holds the same audio
            as a training clip (see :class:`AudioDataModule`).
    """

    def __init__(
        self,
        dataset: AudioDatasetIndex,
        fold: int | None = 1,
        sample_rate: int = 16000,
        max_duration: float | None = None,
        mixup: Mixup | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        train_batches: ClassBalancedBatches | None = None,
        val_fraction: float = 0.0,
        seed: int = 0,
        predict_split: Split = "test",
        pin_memory: bool = False,
        allow_duplicate_audio: bool = False,
    ) -> None:
        pipeline = WaveformPipeline(sample_rate, max_duration)  # checks both
        # No fbank, no feature cache, no normalisation statistic: the pipeline is the waveform's.
        super().__init__(
            dataset,
            fold=fold,
            mixup=mixup,
            batch_size=batch_size,
            num_workers=num_workers,
            train_batches=train_batches,
            val_fraction=val_fraction,
            seed=seed,
            predict_split=predict_split,
            pin_memory=pin_memory,
            allow_duplicate_audio=allow_duplicate_audio,
        )
        self._pipeline = dataclasses.replace(pipeline, class_names=self.class_names)

    @property
    def pipeline(self) -> WaveformPipeline:
        """The input pipeline the model is trained with, which every checkpoint stores: the
        sample rate, ``max_duration`` and the class names."""
        return self._pipeline

    @property
    def sample_rate(self) -> int:
        """Rate the waveforms are read (resampled) at, in Hz."""
        return self._pipeline.sample_rate

    @property
    def max_duration(self) -> float | None:
        """Longest training crop in seconds, or None."""
        return self._pipeline.max_duration

    def _dataset(self, role: str) -> ClipDataset:
        if role not in self._datasets:
            split = self.predict_split if role == "predict" else role
            train = role == "train"  # crops and mixup only ever on training batches
            self._datasets[role] = WaveformClipDataset(
                self._split_clips()[split],
                self.num_classes,
                sample_rate=self.sample_rate,
                max_samples=self._pipeline.max_samples if train else None,
                train=train,
                mixup=self.mixup if train else None,
                seed=self.seed,
            )
        return self._datasets[role]

    def _loader_options(self) -> dict[str, Any]:
        return {**super()._loader_options(), "collate_fn": collate_waveforms}

    def use_pipeline(self, pipeline: InputPipeline) -> None:
        """Checks a checkpoint's input pipeline against this one (nothing of it is computed
        from the files, so nothing is replaced).

        Raises:
            ValueError: If the checkpoint was trained on other classes, at another sample rate,
                or on fbanks (an ``AudioDataModule`` checkpoint).
        """
        if not isinstance(pipeline, WaveformPipeline):
            raise ValueError(
                f"The checkpoint was trained on {pipeline.kind} features (AudioDataModule), not "
                "waveforms; use the data module it was trained with."
            )
        self._check_checkpoint_classes(list(pipeline.class_names))
        if pipeline.sample_rate != self.sample_rate:
            raise ValueError(
                f"The checkpoint was trained on waveforms at {pipeline.sample_rate} Hz but "
                f"`sample_rate` is {self.sample_rate}; use --data.init_args.sample_rate "
                f"{pipeline.sample_rate}."
            )
