"""The waveform mode of the data pipeline, for encoders that take raw audio (wav2vec 2.0, ...)."""

from __future__ import annotations

from typing import Any

from add_lightning.checks import check_int
from add_lightning.data.augment import Mixup
from add_lightning.data.clip_dataset import ClipDataset
from add_lightning.data.datamodule import PIPELINE_KEY, AudioDataModule
from add_lightning.data.datasets.base import AudioDatasetIndex, Split
from add_lightning.data.fbank import FbankOptions
from add_lightning.data.normalization import Normalization
from add_lightning.data.replaced_arguments import refuse_replaced_arguments
from add_lightning.data.sampler import ClassBalancedBatches
from add_lightning.data.waveform_dataset import WaveformClipDataset, collate_waveforms

__all__ = ["WaveformDataModule", "parse_waveform_pipeline"]

# Waveforms are not normalised by the data module (the encoder does it): identity statistics
# keep AudioDataModule from computing fbank statistics.
_IDENTITY = Normalization(mean=0.0, std=0.5)


def parse_waveform_pipeline(pipeline: Any, source: str) -> tuple[int, float | None, list[str]]:
    """Sample rate, training crop and class names of a stored waveform pipeline.

    The counterpart of ``parse_pipeline`` for :meth:`WaveformDataModule.state_dict`.

    Args:
        pipeline: The value stored under :data:`PIPELINE_KEY`, with a ``"waveform"`` entry.
        source: What holds it, for error messages (e.g. the checkpoint's path).

    Raises:
        ValueError: If an entry is missing or invalid.
    """
    try:
        settings = pipeline["waveform"]
        sample_rate = int(settings["sample_rate"])
        max_duration = settings.get("max_duration")
        max_duration = None if max_duration is None else float(max_duration)
        class_names = [str(name) for name in pipeline["class_names"]]
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise ValueError(
            f"The waveform pipeline stored in {source} is damaged ({type(error).__name__}: "
            f"{error}); expected the waveform settings and class_names that `add-lightning fit` "
            "stores."
        ) from None
    return sample_rate, max_duration, class_names


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
        **replaced: Any,
    ) -> None:
        refuse_replaced_arguments(type(self).__name__, replaced)
        check_int("sample_rate", sample_rate)
        if max_duration is not None and not (
            isinstance(max_duration, (int, float)) and max_duration * sample_rate >= 1
        ):
            raise ValueError(
                "Expected argument `max_duration` to be None or a positive number of seconds "
                f"(at least one sample) but got {max_duration!r}."
            )
        super().__init__(
            dataset,
            fold=fold,
            features=FbankOptions(sample_rate=sample_rate),
            normalization=_IDENTITY,
            mixup=mixup,
            batch_size=batch_size,
            num_workers=num_workers,
            train_batches=train_batches,
            val_fraction=val_fraction,
            cache_dir=None,
            cache_features=False,
            seed=seed,
            predict_split=predict_split,
            pin_memory=pin_memory,
            allow_duplicate_audio=allow_duplicate_audio,
        )
        self.sample_rate = sample_rate
        self.max_duration = None if max_duration is None else float(max_duration)

    @property
    def max_samples(self) -> int | None:
        """``max_duration`` in samples (rounded down), or None."""
        if self.max_duration is None:
            return None
        return int(self.max_duration * self.sample_rate)

    def _dataset(self, role: str) -> ClipDataset:
        if role not in self._datasets:
            split = self.predict_split if role == "predict" else role
            train = role == "train"  # crops and mixup only ever on training batches
            self._datasets[role] = WaveformClipDataset(
                self._split_clips()[split],
                self.num_classes,
                sample_rate=self.sample_rate,
                max_samples=self.max_samples if train else None,
                train=train,
                mixup=self.mixup if train else None,
                seed=self.seed,
            )
        return self._datasets[role]

    def _loader_options(self) -> dict[str, Any]:
        return {**super()._loader_options(), "collate_fn": collate_waveforms}

    def state_dict(self) -> dict[str, Any]:
        """The waveform pipeline of this run, stored by Lightning in every checkpoint.

        Returns:
            ``{PIPELINE_KEY: {"waveform": {"sample_rate", "max_duration"}, "class_names":
            [...]}}``.
        """
        return {
            PIPELINE_KEY: {
                "waveform": {"sample_rate": self.sample_rate, "max_duration": self.max_duration},
                "class_names": list(self.class_names),
            }
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Checks a checkpoint's waveform pipeline against this one.

        Raises:
            ValueError: If the checkpoint was trained on other classes, at another sample rate,
                or on fbanks (an ``AudioDataModule`` checkpoint).
        """
        pipeline = state_dict.get(PIPELINE_KEY)
        if pipeline is None:
            return
        if "waveform" not in pipeline:
            raise ValueError(
                "The checkpoint was trained on fbank features (AudioDataModule), not waveforms; "
                "use the data module it was trained with."
            )
        stored_rate, _, class_names = parse_waveform_pipeline(pipeline, "the checkpoint")
        self._check_checkpoint_classes(class_names)
        if stored_rate != self.sample_rate:
            raise ValueError(
                f"The checkpoint was trained on waveforms at {stored_rate} Hz but "
                f"`sample_rate` is {self.sample_rate}; use --data.init_args.sample_rate "
                f"{stored_rate}."
            )
