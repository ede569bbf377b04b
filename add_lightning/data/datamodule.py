"""The LightningDataModule: a dataset index + fold -> normalised fbank batches.

``prepare_data`` downloads, generates or verifies the data (and builds the optional feature
cache); ``setup`` is idempotent and builds only the splits of its stage. Normalisation
statistics, unless given, come from the training clips of the current fold alone (never from
validation or test clips) and are cached per fold in ``cache_dir``; under DDP rank 0 alone
computes (or loads) them and broadcasts them to the other ranks. The feature settings, the
statistics used and the class names make the run's input pipeline (``pipeline``, an
``FbankPipeline``), which every checkpoint holds; a run that restores a checkpoint uses its
pipeline (``use_pipeline``), not statistics of the files on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from add_lightning.atomic import write_text_atomic
from add_lightning.data.augment import Mixup, SpecAugment
from add_lightning.data.cache import FeatureCache, file_fingerprints
from add_lightning.data.clip import Clip
from add_lightning.data.clip_dataset import ClipDataset, collate_clips
from add_lightning.data.datasets.base import SPLITS, AudioDatasetIndex, Split
from add_lightning.data.fbank import FbankOptions
from add_lightning.data.normalization import (
    NORMALIZATION_PRESETS,
    Normalization,
    compute_normalization,
    raw_feature_loader,
)
from add_lightning.data.normalization_cache import (
    load_normalization,
    normalization_file,
    store_normalization,
)
from add_lightning.data.pipeline import FbankPipeline, InputPipeline
from add_lightning.data.sampler import (
    ClassBalancedBatches,
    ClassBalancedBatchSampler,
    EvaluationSampler,
    SeededShuffleSampler,
)
from add_lightning.data.splits import (
    classes_short_of_folds,
    draw_unseen_classes,
    shared_audio,
    split_off_validation,
)
from add_lightning.data.workers import worker_context

log = logging.getLogger(__name__)


class AudioDataModule(LightningDataModule):
    """Batches ``{"features": [B, T, F], "target": [B] or [B, C], "num_frames": [B], "clip_id"}``.

    ``num_frames`` (int64) counts each clip's valid frames; frames from it on are zero padding
    (``AudioClassifier`` turns it into the padding mask of backbones that take one, e.g. BEATs).

    Splits: for fold-based datasets (ESC-50, IEMOCAP, synthetic, own data with folds) ``fold``
    is held out as the test set and, by default, also serves as the validation set (the paper's
    protocol); for split-based datasets (Speech Commands) ``fold`` must be ``None`` and the
    official lists are used. ``val_fraction > 0`` instead holds out a seeded, class-stratified
    part of the training clips as the validation set.

    Under DDP the loaders split the clips between ranks themselves: training batches with
    ``SeededShuffleSampler`` (step ``s`` of all ranks = step ``s`` of one process with
    ``world_size`` times the batch), validation and test batches with ``EvaluationSampler``
    (the single-process batches dealt round robin, no clip repeated).

    Args:
        dataset: The dataset index (``class_path`` in YAML), e.g. ``ESC50`` or ``SpeechCommands``.
        fold: The held-out fold, one of ``dataset.folds``; ``None`` for split-based datasets.
        features: Filterbank settings (default ``FbankOptions()``).
        normalization: Statistics, or the name of a preset of ``NORMALIZATION_PRESETS``
            (``"esc50"``, ``"speech_commands"``, ``"audioset"``, ``"beats"``); ``None`` computes
            them on the training clips of this fold (cached in ``cache_dir``).
        spec_augment: SpecAugment masks of training clips (``class_path:
            add_lightning.data.SpecAugment``); ``None`` masks nothing.
        mixup: Mixup of training clips (``class_path: add_lightning.data.Mixup``: its rate and
            alpha), with soft targets; ``None`` mixes nothing.
        batch_size: Batch size (evaluation, and training unless ``train_batches``).
        num_workers: DataLoader worker processes (also for the normalisation statistics), at
            most the CPU cores this process may use (a larger value is lowered, with a log
            line saying so).
        train_batches: How training batches are drawn: ``ClassBalancedBatches(P, K)`` gives
            batches of P classes x K clips (batch size P * K), so each batch holds same-class
            pairs; ``None`` shuffles (seeded per epoch) into batches of ``batch_size``. Under
            DDP set ``Trainer(use_distributed_sampler=False)`` with class-balanced batches.
        val_fraction: Fraction in [0, 1) of the training clips held out for validation.
        cache_dir: Folder for the normalisation statistics and, with ``cache_features``, the
            fbank cache (built in ``prepare_data``); ``None`` caches nothing.
        cache_features: Keep the fbanks of every clip in ``cache_dir`` (memory-mapped), so no
            audio is decoded after the first pass. Mixup then mixes fbanks instead of waveforms
            (see ``ClipDataset``); set False to mix waveforms as the authors do.
        seed: Seed of shuffling, validation hold-out and augmentation.
        predict_split: The split ``predict_dataloader`` serves.
        pin_memory: Pin batches in page-locked memory (for GPU training).
        unseen_classes: Classes held out of training entirely, for open-set evaluation: a
            number ``U`` (``2 <= U <= C - 2``) of classes drawn with ``unseen_seed``, or their
            names; 0 holds out none. Training and validation then use the other (seen) classes
            only, with ids from their sorted names (``num_classes``, ``class_names``); the test
            split (and ``predict``) holds only the unseen classes' clips of the test fold (or
            official test list), ids from the sorted ``unseen_class_names``. Unseen clips of
            the training folds are not used at all, so over the folds of a cross-validation
            every unseen clip is tested exactly once.
        unseen_seed: Seed of the draw of ``unseen_classes`` (kept apart from ``seed`` so that
            every seed and fold of an experiment holds out the same classes).
        allow_duplicate_audio: Train even when a validation or test clip is the same file
            (hardlink, symlink) or holds the same bytes as a training clip under another name;
            by default that is an error naming both paths, as the model would be tested on
            clips it trained on. The check reads the first 64 KiB of files whose size a
            training and a held-out file share (all of files whose first 64 KiB agree); with
            ``cache_dir`` a clean result is kept there and later runs on unchanged files only
            look at sizes and modification times.

    Raises:
        ValueError: When the splits are built (``setup``): if the training split has no clip
            of a class that the validation or test split holds, or (unless
            ``allow_duplicate_audio``) a held-out clip's audio is also a training clip's.
    """

    def __init__(
        self,
        dataset: AudioDatasetIndex,
        fold: int | None = 1,
        features: FbankOptions | None = None,
        normalization: Normalization | str | None = None,
        spec_augment: SpecAugment | None = None,
        mixup: Mixup | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        train_batches: ClassBalancedBatches | None = None,
        val_fraction: float = 0.0,
        cache_dir: str | None = None,
        cache_features: bool = True,
        seed: int = 0,
        predict_split: Split = "test",
        pin_memory: bool = False,
        unseen_classes: int | list[str] = 0,
        unseen_seed: int = 0,
        allow_duplicate_audio: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(dataset, AudioDatasetIndex):
            raise ValueError(
                "Expected argument `dataset` to be an AudioDatasetIndex (e.g. ESC50) but got "
                f"{type(dataset).__name__}."
            )
        dataset.check_fold(fold)
        if isinstance(normalization, str):
            if normalization not in NORMALIZATION_PRESETS:
                raise ValueError(
                    "Expected argument `normalization` to be None, a Normalization or one of the "
                    f"presets {sorted(NORMALIZATION_PRESETS)} but got {normalization!r}."
                )
            normalization = NORMALIZATION_PRESETS[normalization]
        for name, value, lowest in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(
                    f"Expected argument `{name}` to be an integer >= {lowest} but got {value!r}."
                )
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(
                f"Expected argument `val_fraction` to be in [0, 1) but got {val_fraction!r}."
            )
        self._unseen_class_names = draw_unseen_classes(
            dataset.class_names, unseen_classes, unseen_seed
        )
        seen_count = dataset.num_classes - len(self._unseen_class_names or ())
        for name, value, kind in (
            ("spec_augment", spec_augment, SpecAugment),
            ("mixup", mixup, Mixup),
            ("train_batches", train_batches, ClassBalancedBatches),
        ):
            if value is not None and not isinstance(value, kind):
                raise ValueError(
                    f"Expected argument `{name}` to be None or a {kind.__name__} but got {value!r}."
                )
        if train_batches is not None:
            train_batches.check_classes(seen_count)
        if predict_split not in SPLITS:
            raise ValueError(
                f"Expected argument `predict_split` to be one of {SPLITS} but got "
                f"{predict_split!r}."
            )
        self.dataset = dataset
        self.fold = fold
        self.features = features if features is not None else FbankOptions()
        self.normalization = normalization
        self.spec_augment = spec_augment
        self.mixup = mixup
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._said_workers_capped = False
        self.train_batches = train_batches
        self.val_fraction = val_fraction
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self.cache_features = cache_features
        self.seed = seed
        self.predict_split = predict_split
        self.pin_memory = pin_memory
        self.unseen_classes = unseen_classes
        self.unseen_seed = unseen_seed
        self.allow_duplicate_audio = allow_duplicate_audio
        self._fold_normalization: Normalization | None = normalization
        self._clips: dict[str, list[Clip]] | None = None
        self._datasets: dict[str, ClipDataset] = {}
        self._cache: FeatureCache | None = None

    @property
    def num_classes(self) -> int:
        """Number of (seen) classes C, from metadata only (works right after ``__init__``)."""
        return len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        """Sorted names of the classes trained on (all but ``unseen_class_names``); class id =
        position (works right after ``__init__``)."""
        unseen = set(self._unseen_class_names or ())
        return [name for name in self.dataset.class_names if name not in unseen]

    @property
    def unseen_class_names(self) -> list[str] | None:
        """Sorted names of the classes held out of training (the test split's classes and ids),
        or None when every class is trained on."""
        return None if self._unseen_class_names is None else list(self._unseen_class_names)

    def split_class_names(self, split: Split) -> list[str]:
        """The class names that the targets of ``split`` index (the unseen ones for ``test``)."""
        if split == "test" and self._unseen_class_names is not None:
            return list(self._unseen_class_names)
        return self.class_names

    @property
    def validation_is_test(self) -> bool:
        """Whether the validation clips are the test clips (the held-out fold, ``val_fraction`` 0).

        Then choosing a checkpoint by a validation metric chooses it on the test data; the CLI
        writes no ``best.ckpt`` for such runs.
        """
        return self.fold is not None and self.val_fraction == 0

    # preparation

    def prepare_data(self) -> None:
        """Downloads, generates or verifies the dataset and builds the feature cache if any."""
        self.dataset.prepare()
        cache = self._feature_cache()
        if cache is not None:
            cache.build()

    def _feature_cache(self) -> FeatureCache | None:
        """One cache over every clip of the dataset, shared by all folds and splits."""
        if self.cache_dir is not None and self.cache_features and self._cache is None:
            paths = [entry.path for entry in self.dataset.entries()]
            self._cache = FeatureCache(self.cache_dir, paths, self.features)
        return self._cache

    def _relabelled(self, clips: list[Clip], split: Split) -> list[Clip]:
        """The clips of ``split``'s classes, with ids in :meth:`split_class_names` order."""
        if self._unseen_class_names is None:
            return clips
        all_names = self.dataset.class_names
        ids = {name: index for index, name in enumerate(self.split_class_names(split))}
        return [
            dataclasses.replace(clip, label=ids[all_names[clip.label]])
            for clip in clips
            if all_names[clip.label] in ids
        ]

    def _split_clips(self) -> dict[str, list[Clip]]:
        if self._clips is None:
            train = self._relabelled(self.dataset.clips("train", self.fold), "train")
            if not train:
                raise ValueError(f"{self.dataset!r} has no training clips for fold {self.fold}.")
            if self.val_fraction > 0:
                train, validation = split_off_validation(train, self.val_fraction, self.seed)
            else:
                validation = self._relabelled(
                    self.dataset.clips("validation", self.fold), "validation"
                )
            test = self._relabelled(self.dataset.clips("test", self.fold), "test")
            self._check_training_classes(train, validation, test)
            self._check_shared_audio(train, [*validation, *test])
            self._clips = {"train": train, "validation": validation, "test": test}
            log.info(
                "%r fold %s: %d training, %d validation, %d test clips, %d classes%s",
                self.dataset,
                self.fold,
                len(train),
                len(validation),
                len(test),
                self.num_classes,
                ""
                if self._unseen_class_names is None
                else f"; test: the {len(self._unseen_class_names)} unseen classes "
                f"{self._unseen_class_names}",
            )
        return self._clips

    def _check_training_classes(
        self, train: list[Clip], validation: list[Clip], test: list[Clip]
    ) -> None:
        """Warns about classes that some fold trains or tests without; raises if this one does.

        Raises:
            ValueError: If the validation or test split holds a class (of the trained ones)
                that the training split has no clip of.
        """
        names = self.class_names
        folds = self.dataset.folds
        short = (
            classes_short_of_folds(
                ((e.label, int(e.group)) for e in self.dataset.entries() if e.label in names),
                folds,
            )
            if folds
            else {}
        )
        described = {label: _fold_coverage(counts, folds) for label, counts in short.items()}
        if described:
            log.warning(
                "%r: classes with fewer clips than the %d folds or with all their clips in one "
                "fold: %s",
                self.dataset,
                len(folds),
                "; ".join(f"{label!r} {text}" for label, text in described.items()),
            )
        trained = {clip.label for clip in train}
        held_out = [("validation", validation)]
        if self._unseen_class_names is None:  # else the test split holds the unseen classes
            held_out.append(("test", test))
        for split, clips in held_out:
            missing = sorted({clip.label for clip in clips} - trained)
            if missing:
                classes = "; ".join(
                    f"{names[label]!r} "
                    + described.get(
                        names[label], f"({sum(c.label == label for c in clips)} {split} clips)"
                    )
                    for label in missing
                )
                raise ValueError(
                    f"{self.dataset!r} fold {self.fold}: the training split has no clip of the "
                    f"classes {classes}, which the {split} split holds: the model would be "
                    "tested on classes it never trained on. Add training clips of them or leave "
                    "them out with the dataset's `classes`."
                )

    def _check_shared_audio(self, train: list[Clip], held_out: list[Clip]) -> None:
        """Refuses (or with ``allow_duplicate_audio`` warns about) held-out audio in training.

        Raises:
            ValueError: If a held-out clip is the same file or the same bytes as a training
                clip, naming both paths and the option.
        """
        record = None  # a clean verdict is kept in cache_dir, keyed on every file's fingerprint
        if self.cache_dir is not None:
            files = [file_fingerprints(clip.path for clip in clips) for clips in (train, held_out)]
            key = hashlib.sha256(json.dumps(files).encode("utf-8")).hexdigest()[:20]
            record = self.cache_dir / f"no-shared-audio-{key}.json"
            if record.is_file():
                return
        shared = shared_audio((clip.path for clip in train), (clip.path for clip in held_out))
        if not shared:
            if record is not None:
                try:
                    write_text_atomic(
                        record, json.dumps({"train": len(train), "held_out": len(held_out)})
                    )
                except OSError as error:
                    log.warning("Could not record %s (%s); the check runs again.", record, error)
            return
        train_paths, held_out_paths = shared[0]
        count = sum(len(paths) for _, paths in shared)
        message = (
            f"{self.dataset!r} fold {self.fold}: {count} validation/test clips hold the same "
            f"audio as a training clip (same file or identical bytes), e.g. {held_out_paths[0]} "
            f"and the training clip {train_paths[0]}"
        )
        if not self.allow_duplicate_audio:
            raise ValueError(
                f"{message}; the model would be tested on clips it trained on. Remove the "
                "copies or set `allow_duplicate_audio: true` (--data.init_args."
                "allow_duplicate_audio true) to train anyway."
            )
        log.warning("%s; training anyway (allow_duplicate_audio).", message)

    # normalisation

    def _training_normalization(self) -> Normalization:
        """Statistics of the current fold's training clips only (computed once, then cached).

        Under DDP (a trainer with more than one process attached) rank 0 computes or loads
        them and broadcasts them, so the training split is read once per fold, not per rank.
        """
        if self._fold_normalization is not None:
            return self._fold_normalization
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            statistics = self._local_normalization() if trainer.is_global_zero else None
            mean, std = trainer.strategy.broadcast(
                None if statistics is None else (statistics.mean, statistics.std), src=0
            )
            self._fold_normalization = Normalization(mean=mean, std=std)
            return self._fold_normalization
        return self._local_normalization()

    def _local_normalization(self) -> Normalization:
        """The statistics from ``cache_dir`` if stored there, else computed in this process."""
        if self._fold_normalization is not None:
            return self._fold_normalization
        train = self._split_clips()["train"]
        cache = self._feature_cache()
        path = None
        if self.cache_dir is not None:
            path = normalization_file(
                self.cache_dir, self.features, cache is not None, (clip.path for clip in train)
            )
            stored = load_normalization(path) if path.is_file() else None
            if stored is not None:
                self._fold_normalization = stored
                log.info("Loaded normalisation %s from %s", stored, path)
                return stored
        source = ClipDataset(train, self.num_classes, self.features, None, cache=cache)
        log.info("Computing normalisation statistics on %d training clips", len(source))
        statistics = compute_normalization(raw_feature_loader(source, self._worker_count()))
        if path is not None:
            store_normalization(path, statistics)
        log.info("Normalisation of fold %s: %s", self.fold, statistics)
        self._fold_normalization = statistics
        return statistics

    # the input pipeline

    @property
    def pipeline(self) -> FbankPipeline:
        """The input pipeline the model is trained with, which every checkpoint stores.

        The feature settings, the normalisation of training (the training clips' statistics,
        computed now if not yet, or the preset) and the class names.
        """
        return FbankPipeline(self.features, self._training_normalization(), self.class_names)

    def use_pipeline(self, pipeline: InputPipeline) -> None:
        """Uses the input pipeline of a checkpoint instead of this config's.

        The stored normalisation replaces statistics computed from the files on disk (which
        may have changed since training) or a given preset; stored feature settings that
        differ from ``features`` replace them, with a warning naming each difference.

        Raises:
            ValueError: If the pipeline is not an fbank one, or its class names differ from
                this dataset's: the class ids would not mean the same classes.
        """
        if not isinstance(pipeline, FbankPipeline):
            raise ValueError(
                f"The checkpoint was trained on {pipeline.kind} inputs, not fbank features "
                "(AudioDataModule); use the data module it was trained with."
            )
        self._check_checkpoint_classes(list(pipeline.class_names))
        features, normalization = pipeline.features, pipeline.normalization
        if features != self.features:
            given, stored = dataclasses.asdict(self.features), dataclasses.asdict(features)
            differences = ", ".join(
                f"{key} {stored[key]!r} (config {given[key]!r})"
                for key in given
                if given[key] != stored[key]
            )
            log.warning(
                "The data config's feature settings contradict the checkpoint's; using the "
                "checkpoint's, which the model was trained with: %s.",
                differences,
            )
            self.features = features
            self._cache = None
            self._datasets.clear()
        if self.normalization is not None and self.normalization != normalization:
            log.warning(
                "The data config's normalization %s is replaced by the checkpoint's %s, which "
                "the model was trained with.",
                self.normalization,
                normalization,
            )
        if self._fold_normalization != normalization:
            self._fold_normalization = normalization
            self._datasets.clear()

    def _check_checkpoint_classes(self, class_names: list[str]) -> None:
        """Raises a ValueError unless a checkpoint's class names are this module's.

        Raises:
            ValueError: If they differ: the class ids would not mean the same classes.
        """
        if class_names != list(self.class_names):
            raise ValueError(
                f"The checkpoint was trained on the classes {class_names[:5]}... but "
                f"{self.dataset!r} has {list(self.class_names)[:5]}...: class ids would not mean "
                "the same classes; use the dataset the checkpoint was trained on."
            )

    # datasets and loaders

    def setup(self, stage: str | None = None) -> None:
        """Builds the clip datasets of ``stage`` (fit, validate, test, predict or None = all)."""
        roles = {
            "fit": ("train", "validation"),
            "validate": ("validation",),
            "test": ("test",),
            "predict": ("predict",),
            None: ("train", "validation", "test"),
        }
        if stage not in roles:
            raise ValueError(
                f"Expected argument `stage` to be one of {list(roles)} but got {stage!r}."
            )
        for role in roles[stage]:
            self._dataset(role)

    def _dataset(self, role: str) -> ClipDataset:
        """The dataset of ``role`` (a split, or ``"predict"`` = ``predict_split`` unaugmented)."""
        if role not in self._datasets:
            split = self.predict_split if role == "predict" else role
            train = role == "train"  # augmentation only ever on training batches
            self._datasets[role] = ClipDataset(
                self._split_clips()[split],
                len(self.split_class_names(split)),
                self.features,
                self._training_normalization(),
                train=train,
                spec_augment=self.spec_augment if train else None,
                mixup=self.mixup if train else None,
                cache=self._feature_cache(),
                seed=self.seed,
            )
        return self._datasets[role]

    def _worker_count(self) -> int:
        """``num_workers``, at most the CPU cores available (said once when lowered).

        More workers than cores only compete for them, and torch warns at every DataLoader
        ("Our suggested max number of worker in current system is 2"): the shipped configs'
        4 and 8 are meant for a GPU machine.
        """
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        cores = cores or 1
        if self.num_workers > cores and not self._said_workers_capped:
            self._said_workers_capped = True
            log.info(
                "Using %d DataLoader workers, not num_workers %d: this process may use %d CPU "
                "cores.",
                cores,
                self.num_workers,
                cores,
            )
        return min(self.num_workers, cores)

    def _loader_options(self) -> dict[str, Any]:
        workers = self._worker_count()
        return {
            "collate_fn": collate_clips,
            "num_workers": workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": workers > 0,
            "multiprocessing_context": worker_context(workers),
        }

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """Moves a batch of this data module to ``device`` directly.

        Its batches are flat dicts of tensors and clip-id lists; Lightning's generic walk
        (``move_data_to_device``) gives the same batch at several times the cost, about
        0.2 ms per training step on the quickstart's CPU. Anything else goes to Lightning.
        Non-blocking copies except to the CPU and MPS, as Lightning makes them. (The data
        module's hook, not the model's: Lightning warns at every run when a LightningModule
        overrides it and a data module is given.)
        """
        if type(batch) is not dict or not all(_flat_batch_value(v) for v in batch.values()):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        non_blocking = device.type not in ("cpu", "mps")
        return {
            key: value.to(device, non_blocking=non_blocking) if isinstance(value, Tensor) else value
            for key, value in batch.items()
        }

    def _first_training_epoch(self) -> int:
        """The epoch the trainer runs next: 0, or after a restored checkpoint the resumed one.

        Lightning creates the training iterator before it calls ``set_epoch`` on the sampler, and
        DataLoader workers prefetch indices as soon as the iterator exists; on a resumed run
        that first iteration would replay epoch 0's order and augmentation. So the sampler
        starts at the epoch that ``set_epoch`` will announce: the fit loop's count of processed
        epochs (restored from the checkpoint before this loader is requested).
        """
        trainer = self.trainer
        return 0 if trainer is None else int(trainer.fit_loop.epoch_progress.current.processed)

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded per epoch) or class-balanced, augmented training batches."""
        dataset = self._dataset("train")
        sampler: SeededShuffleSampler | ClassBalancedBatchSampler
        if self.train_batches is not None:
            trainer = self.trainer  # ranks from the trainer when attached, else torch.distributed
            sampler = self.train_batches.sampler(
                [clip.label for clip in dataset.clips],
                seed=self.seed,
                num_replicas=None if trainer is None else trainer.world_size,
                rank=None if trainer is None else trainer.global_rank,
                on_epoch=dataset.set_epoch,
            )
            sampler.set_epoch(self._first_training_epoch())
            return DataLoader(dataset, batch_sampler=sampler, **self._loader_options())
        trainer = self.trainer  # under DDP the sampler splits the clips between ranks itself
        sampler = SeededShuffleSampler(
            len(dataset),
            seed=self.seed,
            on_epoch=dataset.set_epoch,
            num_replicas=None if trainer is None else trainer.world_size,
            rank=None if trainer is None else trainer.global_rank,
        )
        sampler.set_epoch(self._first_training_epoch())
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, **self._loader_options()
        )

    def _evaluation_loader(self, role: str) -> DataLoader:
        dataset = self._dataset(role)
        if len(dataset) == 0:
            split = self.predict_split if role == "predict" else role
            raise ValueError(
                f"{self.dataset!r} has no {split} clips for fold {self.fold}; use a dataset with "
                f"{split} clips (folds or a split column) or set `val_fraction` > 0."
            )
        trainer = self.trainer
        if role != "predict" and trainer is not None and trainer.world_size > 1:
            # Lightning's DistributedSampler would pad the set with repeated clips.
            sampler = EvaluationSampler(
                len(dataset), self.batch_size, trainer.world_size, trainer.global_rank
            )
            return DataLoader(
                dataset, batch_size=self.batch_size, sampler=sampler, **self._loader_options()
            )
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=False, **self._loader_options()
        )

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Validation batches; ``[]`` (no validation) when the dataset has no validation clips."""
        if not self._split_clips()["validation"]:
            log.warning(
                "%r has no validation clips for fold %s; validation is skipped (set "
                "`val_fraction` > 0 to hold out training clips).",
                self.dataset,
                self.fold,
            )
            return []
        return self._evaluation_loader("validation")

    def test_dataloader(self) -> DataLoader:
        """Test batches (the held-out fold or the official test list)."""
        return self._evaluation_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """Batches of ``predict_split``, unaugmented, in index order."""
        return self._evaluation_loader("predict")


def _flat_batch_value(value: object) -> bool:
    """Whether ``value`` moves to a device as it is: a tensor, or a list of clip ids."""
    if isinstance(value, Tensor):
        return True
    return type(value) in (list, tuple) and all(isinstance(item, str) for item in value)


def _fold_coverage(counts: dict[int, int], folds: tuple[int, ...]) -> str:
    """``(N clips in folds [...]: folds [...] test without it, fold k trains without it ...)``."""
    total = sum(counts.values())
    parts = []
    untested = [fold for fold in folds if fold not in counts]
    if untested:
        parts.append(f"folds {untested} test without it")
    if len(counts) == 1:
        parts.append(f"fold {next(iter(counts))} trains without it but tests on it")
    return f"({total} clip{'s' * (total != 1)} in folds {list(counts)}: {', '.join(parts)})"


__all__ = ["AudioDataModule"]
