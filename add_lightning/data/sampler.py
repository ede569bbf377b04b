"""Class-balanced batches: P classes x K clips, so every batch holds same-class pairs.

The ADD terms mu_p and sigma_p are computed over same-class pairs of a batch; with 50 classes
and random batches of 32 many batches hold few or no such pairs. A batch of P classes with K
clips each has P * K * (K - 1) ordered same-class pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch.distributed
from torch.utils.data import DistributedSampler, Sampler

from add_lightning.checks import check_int

T = TypeVar("T")


class _EpochCounter:
    """The epoch of a sampler: set by ``set_epoch``, else advanced by one per complete pass.

    Lightning calls ``set_epoch`` on a DataLoader's ``sampler`` but not on a custom
    ``batch_sampler``, and plain PyTorch loops often never call it; advancing after each complete
    pass still gives every epoch new, reproducible batches. An iteration that is started but not
    finished does not advance the epoch: a DataLoader with workers creates its index iterator
    twice before the first batch, and Lightning creates one before it calls ``set_epoch``, so
    counting ``__iter__`` calls would skip epochs. ``on_epoch`` (e.g. ``ClipDataset.set_epoch``,
    which seeds the augmentation) is told the epoch when an iteration starts, in the main process
    and before any index reaches a worker.
    """

    def __init__(self, on_epoch: Callable[[int], None] | None) -> None:
        self.on_epoch = on_epoch
        self.epoch = 0
        self._completed = False  # the pass over `epoch` finished: the next one draws epoch + 1

    def set(self, epoch: int) -> None:
        check_int("epoch", epoch, minimum=0)
        self.epoch, self._completed = epoch, False

    def start(self) -> int:
        if self._completed:
            self.epoch, self._completed = self.epoch + 1, False
        if self.on_epoch is not None:
            self.on_epoch(self.epoch)
        return self.epoch

    def iterate(self, epoch: int, items: Iterable[T]) -> Iterator[T]:
        """Yields ``items`` (the pass over ``epoch``) and marks the epoch complete at the end."""
        yield from items
        if epoch == self.epoch:  # not re-chosen by `set_epoch` in the meantime
            self._completed = True


def _distributed_default(value: int | None, getter_name: str, fallback: int) -> int:
    if value is not None:
        return value
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return getattr(torch.distributed, getter_name)()
    return fallback


def _check_replicas(num_replicas: int, rank: int) -> None:
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(
            f"Expected 0 <= `rank` < `num_replicas` but got rank={rank}, "
            f"num_replicas={num_replicas}."
        )


class SeededShuffleSampler(DistributedSampler):
    """A permutation of ``range(num_samples)`` drawn from ``(seed, epoch)``, split between ranks.

    Every rank draws the same permutation, pads it (as ``DistributedSampler`` does, by repeating
    its first indices) to a multiple of ``num_replicas`` and takes every ``num_replicas``-th
    index from ``rank`` on. So the batches of step ``s`` of all ranks together hold the clips of
    step ``s`` of one process with ``num_replicas`` times the batch size. It is a
    ``DistributedSampler``, so Lightning does not wrap it under DDP but calls its ``set_epoch``
    directly, which keeps the epoch (and with it order and augmentation) right after a resume.
    With one replica it is a seeded shuffle of the whole dataset.

    Args:
        num_samples: Dataset length.
        seed: Seed of the permutations.
        on_epoch: Called with the epoch when an iteration starts (as in
            ``ClassBalancedBatchSampler``).
        num_replicas: Number of ranks; default the torch.distributed world size (1 if none).
        rank: This rank; default the torch.distributed rank (0 if none).
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        on_epoch: Callable[[int], None] | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        # DistributedSampler.__init__ is not called: it needs a dataset and an epoch attribute;
        # its public attributes are set here with the same meaning.
        if num_samples < 1:
            raise ValueError(f"Expected argument `num_samples` to be >= 1 but got {num_samples}.")
        self.num_replicas = _distributed_default(num_replicas, "get_world_size", 1)
        self.rank = _distributed_default(rank, "get_rank", 0)
        _check_replicas(self.num_replicas, self.rank)
        self.dataset_length = num_samples
        self.num_samples = math.ceil(num_samples / self.num_replicas)  # per rank
        self.total_size = self.num_samples * self.num_replicas
        self.shuffle, self.drop_last = True, False
        self.seed = seed
        self._epochs = _EpochCounter(on_epoch)

    @property
    def epoch(self) -> int:
        """The epoch of the latest (or next, after ``set_epoch``) iteration."""
        return self._epochs.epoch

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose permutation the next ``__iter__`` yields."""
        self._epochs.set(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        epoch = self._epochs.start()
        permutation = np.random.default_rng([self.seed, epoch]).permutation(self.dataset_length)
        indices = permutation.tolist()
        while len(indices) < self.total_size:  # pad as DistributedSampler does
            indices += indices[: self.total_size - len(indices)]
        return self._epochs.iterate(epoch, indices[self.rank :: self.num_replicas])


class EvaluationSampler(DistributedSampler):
    """Sequential evaluation indices split between ranks without repeating any clip.

    Lightning's ``DistributedSampler`` pads an evaluation set by repeating clips, which counts
    them twice in accuracy, F1 and the embedding statistics. Here the batches of one process
    (consecutive runs of ``batch_size`` indices) are dealt round robin: rank ``r`` gets batches
    ``r, r + num_replicas, ...``. Every clip is seen once, and every batch is one that a single
    process would see, so batch-level loss terms (ADD, OPL) average to the single-process value
    too. Ranks may get one batch more than others; that is fine for evaluation, where no
    gradients are all-reduced. With fewer batches than ranks, the clips are split into
    ``num_replicas`` consecutive parts of nearly equal size instead (one batch each; per-clip
    metrics stay exact, batch-level loss terms then come from smaller batches).

    Args:
        num_samples: Dataset length (at least ``num_replicas``).
        batch_size: The DataLoader's batch size.
        num_replicas: Number of ranks; default the torch.distributed world size (1 if none).
        rank: This rank; default the torch.distributed rank (0 if none).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        self.num_replicas = _distributed_default(num_replicas, "get_world_size", 1)
        self.rank = _distributed_default(rank, "get_rank", 0)
        _check_replicas(self.num_replicas, self.rank)
        if batch_size < 1:
            raise ValueError(f"Expected argument `batch_size` to be >= 1 but got {batch_size}.")
        if num_samples < self.num_replicas:
            raise ValueError(
                f"Cannot split {num_samples} evaluation clips between {self.num_replicas} "
                "processes without repeating clips: use fewer devices or more clips."
            )
        starts = range(0, num_samples, batch_size)
        if len(starts) >= self.num_replicas:
            mine = [range(s, min(s + batch_size, num_samples)) for s in starts][
                self.rank :: self.num_replicas
            ]
            self.indices = [index for batch in mine for index in batch]
        else:
            bounds = np.linspace(0, num_samples, self.num_replicas + 1).round().astype(int)
            self.indices = list(range(bounds[self.rank], bounds[self.rank + 1]))
        self.num_samples = len(self.indices)
        self.total_size = num_samples
        self.shuffle, self.drop_last, self.seed, self.epoch = False, False, 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Accepted and ignored: the evaluation order does not depend on the epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Yields batches of ``classes_per_batch`` classes x ``clips_per_class`` clips (indices).

    Classes are drawn from a seeded, reshuffled queue (every class appears about equally
    often, never twice in one batch); each class's clips from its own reshuffled queue (a
    class with fewer than K clips repeats clips within a batch). The batches of an epoch are
    generated identically on every rank from ``(seed, epoch)`` and dealt round robin, so ranks
    get distinct batches and the same number of them. The epoch advances by one
    after each complete pass unless ``set_epoch`` chose it. Under DDP with Lightning, set
    ``Trainer(use_distributed_sampler=False)``: this sampler splits the batches between ranks
    itself (Lightning refuses to wrap a custom batch sampler and says so).

    Args:
        labels: The class id of every clip of the dataset.
        classes_per_batch: P, distinct classes per batch.
        clips_per_class: K >= 2, clips per class in a batch.
        num_batches: Batches per epoch over all ranks; default ``len(labels) // (P * K)``.
        seed: Seed of the shuffles.
        num_replicas: Number of ranks; default the torch.distributed world size (1 if none).
        rank: This rank; default the torch.distributed rank (0 if none).
        on_epoch: Called with the epoch when an iteration starts, before any index is handed
            out, e.g. ``ClipDataset.set_epoch`` to reseed the augmentation.
    """

    def __init__(
        self,
        labels: Sequence[int],
        classes_per_batch: int,
        clips_per_class: int,
        num_batches: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        on_epoch: Callable[[int], None] | None = None,
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.ndim != 1 or self.labels.size == 0:
            raise ValueError(
                f"Expected argument `labels` to be a non-empty 1-D sequence of class ids but got "
                f"shape {self.labels.shape}."
            )
        if classes_per_batch < 1:
            raise ValueError(
                f"Expected argument `classes_per_batch` to be >= 1 but got {classes_per_batch}."
            )
        if clips_per_class < 2:
            raise ValueError(
                "Expected argument `clips_per_class` to be >= 2 (same-class pairs need two clips) "
                f"but got {clips_per_class}."
            )
        self.classes = np.unique(self.labels)
        if classes_per_batch > len(self.classes):
            raise ValueError(
                f"Expected argument `classes_per_batch` to be at most the {len(self.classes)} "
                f"classes present in `labels` but got {classes_per_batch}."
            )
        self.num_replicas = _distributed_default(num_replicas, "get_world_size", 1)
        self.rank = _distributed_default(rank, "get_rank", 0)
        _check_replicas(self.num_replicas, self.rank)
        self.classes_per_batch = classes_per_batch
        self.clips_per_class = clips_per_class
        self.batch_size = classes_per_batch * clips_per_class
        total = num_batches if num_batches is not None else len(self.labels) // self.batch_size
        if total < 1:
            raise ValueError(f"Expected argument `num_batches` to be >= 1 but got {total}.")
        self.batches_per_replica = max(1, total // self.num_replicas)
        self.seed = seed
        self._epochs = _EpochCounter(on_epoch)
        self._clips_of = {int(c): np.flatnonzero(self.labels == c) for c in self.classes}

    @property
    def epoch(self) -> int:
        """The epoch of the latest (or next, after ``set_epoch``) iteration."""
        return self._epochs.epoch

    @property
    def sampler(self) -> ClassBalancedBatchSampler:
        """This object: Lightning calls ``set_epoch`` on ``batch_sampler.sampler``, so the
        trainer's epoch (also after resuming from a checkpoint) selects the batches."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose batches the next ``__iter__`` yields."""
        self._epochs.set(epoch)

    def __len__(self) -> int:
        return self.batches_per_replica

    def _global_batches(self, epoch: int) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        class_queue: list[int] = []
        clip_queues: dict[int, list[int]] = {c: [] for c in self._clips_of}
        for _ in range(self.batches_per_replica * self.num_replicas):
            chosen: list[int] = []
            while len(chosen) < self.classes_per_batch:
                if not class_queue:  # refill, leaving out the classes already in this batch
                    class_queue = [int(c) for c in rng.permutation(self.classes) if c not in chosen]
                chosen.append(class_queue.pop())
            batch: list[int] = []
            for c in chosen:
                queue = clip_queues[c]
                for _ in range(self.clips_per_class):
                    if not queue:
                        queue.extend(int(i) for i in rng.permutation(self._clips_of[c]))
                    batch.append(queue.pop())
            yield batch

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self._epochs.start()
        return self._epochs.iterate(epoch, self._batches_of_rank(epoch))

    def _batches_of_rank(self, epoch: int) -> Iterator[list[int]]:
        for index, batch in enumerate(self._global_batches(epoch)):
            if index % self.num_replicas == self.rank:
                yield batch


class ClassBalancedBatches:
    """Training batches of P classes x K clips: what a data module's ``train_batches`` takes.

    The data module builds a :class:`ClassBalancedBatchSampler` from it over its training
    clips (``sampler``), with its seed, the trainer's ranks and the dataset's epoch callback;
    the batch size is P * K (the module's ``batch_size`` then serves evaluation only). Under
    DDP set ``Trainer(use_distributed_sampler=False)``: the sampler splits the batches between
    ranks itself.

    Args:
        classes_per_batch: P >= 1, distinct classes per batch (at most the classes trained on).
        clips_per_class: K >= 2, clips per class in a batch (same-class pairs need two).
    """

    def __init__(self, classes_per_batch: int, clips_per_class: int) -> None:
        check_int("classes_per_batch", classes_per_batch)
        check_int("clips_per_class", clips_per_class, minimum=2)
        self.classes_per_batch = classes_per_batch
        self.clips_per_class = clips_per_class

    @property
    def batch_size(self) -> int:
        """P * K."""
        return self.classes_per_batch * self.clips_per_class

    def check_classes(self, num_classes: int, argument: str = "train_batches") -> None:
        """Raises a ValueError naming ``argument`` unless P <= ``num_classes``.

        Raises:
            ValueError: If a batch would need more classes than the training clips have.
        """
        if self.classes_per_batch > num_classes:
            raise ValueError(
                f"Expected argument `{argument}` to draw at most the {num_classes} training "
                f"classes per batch but got {self!r}; lower `classes_per_batch`."
            )

    def sampler(
        self,
        labels: Sequence[int],
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        on_epoch: Callable[[int], None] | None = None,
    ) -> ClassBalancedBatchSampler:
        """The batch sampler over clips with these ``labels`` (see ClassBalancedBatchSampler)."""
        return ClassBalancedBatchSampler(
            labels,
            self.classes_per_batch,
            self.clips_per_class,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
            on_epoch=on_epoch,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClassBalancedBatches):
            return NotImplemented
        return (self.classes_per_batch, self.clips_per_class) == (
            other.classes_per_batch,
            other.clips_per_class,
        )

    def __hash__(self) -> int:
        return hash((self.classes_per_batch, self.clips_per_class))

    def __repr__(self) -> str:
        return (
            f"ClassBalancedBatches(classes_per_batch={self.classes_per_batch}, "
            f"clips_per_class={self.clips_per_class})"
        )


__all__ = [
    "ClassBalancedBatchSampler",
    "ClassBalancedBatches",
    "EvaluationSampler",
    "SeededShuffleSampler",
]
