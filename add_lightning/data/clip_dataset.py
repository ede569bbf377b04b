"""A map-style dataset of labelled clips that yields normalised fbank features, lazily."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from add_lightning.checks import check_int

from . import audio
from .augment import Mixup, SpecAugment, mix_fbanks, mix_waveforms, mixup_targets
from .cache import FeatureCache
from .clip import Clip
from .fbank import FbankOptions, compute_fbank_frames, load_fbank_frames, pad_or_crop
from .normalization import Normalization


class ClipItems(Sequence):
    """The items of one batch, made from their collated ``batch`` when one is read.

    A sequence of item dicts (``default_collate`` of it gives ``batch``), whose items are
    views into ``batch``; :func:`collate_clips` returns ``batch`` itself.
    """

    def __init__(self, batch: dict[str, Any]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["clip_id"])

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"item {index} of a batch of {len(self)}")
        return {key: value[index] for key, value in self.batch.items()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[index] for index in range(len(self)))


def collate_clips(items: Sequence[dict[str, object]]) -> dict[str, Any]:
    """``default_collate``, or the batch that a ``ClipItems`` list already holds."""
    if isinstance(items, ClipItems):
        return items.batch
    return default_collate(items)


class ClipDataset(Dataset[dict[str, object]]):
    """Clips to batch items ``{"features", "target", "num_frames", "clip_id"}``.

    Only the clip list is held in memory: each item decodes its file (or reads one row of a
    ``FeatureCache``), computes the fbank, augments it when ``train``, and normalises it.

    Augmentation (``train=True`` only; evaluation items are never augmented), in AST's order:
    mixup, then SpecAugment on the un-normalised fbank (masked cells = 0), then normalisation.
    Mixup, as the authors do: with probability ``mixup.rate`` the clip's waveform is mixed with
    that of another random clip of the dataset, lambda ~ Beta(alpha, alpha) (the authors'
    alpha = 10), and the one-hot targets alike. From a cache (no waveforms), the two fbanks
    are mixed in the power domain instead (``mix_fbanks``: ``log(lam**2 e^a + (1 - lam)**2
    e^b)``, about the fbank of the waveform mix).

    Randomness: item ``i`` of epoch ``e`` draws from a ``torch.Generator`` seeded with
    ``SeedSequence([seed, e, i])``, so an item's augmentation depends on (seed, epoch, index)
    alone: the same for any number of workers or batch order, different between items and
    epochs. Call ``set_epoch(e)`` before epoch e's indices reach the workers, e.g. from the
    sampler when its iteration starts (as ``SeededShuffleSampler`` does). The epoch lives in
    shared memory, so workers see it even though they were forked before the sampler ran, or
    persist across epochs.

    Args:
        clips: The clips.
        num_classes: Number of classes C.
        features: Filterbank settings.
        normalization: Statistics to normalise with; None returns un-normalised features.
        train: Whether to augment.
        spec_augment: The masks, used when ``train``; None masks nothing.
        mixup: The mixup (rate and alpha), used when ``train``; None mixes nothing. When
            ``train`` and ``mixup.rate > 0``, every item's target is a float32 ``[C]`` vector
            (one-hot when not mixed) so batches collate; otherwise an int64 scalar.
        cache: Precomputed fbanks holding every clip, computed with ``features``; built (if not
            valid yet) on construction.
        seed: Seed (>= 0) of the augmentation.

    Shape:
        - features: ``[target_frames, num_mel_bins]``, float32.
        - target: ``[]`` int64, or ``[num_classes]`` float32 (rows sum to 1).
        - num_frames: ``[]`` int64, the valid (not zero-padded) frames of ``features``:
          ``min(fbank frames, target_frames)``; a mixed item keeps its own clip's count (the
          other clip is padded or cropped to it).
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        num_classes: int,
        features: FbankOptions,
        normalization: Normalization | None,
        train: bool = False,
        spec_augment: SpecAugment | None = None,
        mixup: Mixup | None = None,
        cache: FeatureCache | None = None,
        seed: int = 0,
    ) -> None:
        check_int("num_classes", num_classes)
        check_int("seed", seed, minimum=0)
        mixing = train and mixup is not None and mixup.rate > 0
        clips = list(clips)
        for clip in clips:
            if not 0 <= clip.label < num_classes:
                raise ValueError(
                    f"Expected every clip label to be in [0, {num_classes}) but clip "
                    f"{clip.clip_id!r} ({clip.path}) has label {clip.label!r}."
                )
        if mixing and len(clips) < 2:
            raise ValueError(f"Expected at least 2 clips for mixup ({mixup}) but got {len(clips)}.")
        if cache is not None:
            if cache.options != features:
                raise ValueError(
                    f"Expected argument `cache` to hold features computed with {features} but it "
                    f"holds {cache.options}."
                )
            missing = [clip.path for clip in clips if clip.path not in cache]
            if missing:
                raise ValueError(
                    f"Expected argument `cache` to hold every clip but {len(missing)} are "
                    f"missing, e.g. {missing[0]}."
                )
            cache.build()  # here, in the main process, not in every DataLoader worker
        self._cache_rows = None if cache is None else [cache.row(clip.path) for clip in clips]
        self.clips = clips
        self.num_classes = num_classes
        self.features = features
        self.normalization = normalization
        self.train = train
        self.mixup = mixup
        self.cache = cache
        self.seed = seed
        self.spec_augment = spec_augment if spec_augment is not None else SpecAugment()
        self.soft_targets = mixing
        # whether items draw random numbers at all (without, an item is a pure read)
        self._augments = train and (self.soft_targets or len(self.spec_augment.masks) > 0)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def epoch(self) -> int:
        """The epoch that seeds the augmentation."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Selects the augmentation of ``epoch`` (>= 0) for all later items, in every worker."""
        check_int("epoch", epoch, minimum=0)
        self._epoch.fill_(epoch)

    def raw_features(self, index: int) -> Tensor:
        """Un-normalised, un-augmented fbank of clip ``index`` (read by ``compute_normalization``).

        Shape:
            - Output: ``[target_frames, num_mel_bins]``, float32.
        """
        return self._fbank(index)[0]

    def __getitem__(self, index: int) -> dict[str, object]:
        clip = self.clips[index]
        if self._augments:
            generator = self._generator(index)
            fbank, target, num_frames = self._mixup(index, generator)
            fbank = self.spec_augment(fbank, generator=generator)
        else:
            fbank, num_frames = self._fbank(index)
            target = torch.tensor(clip.label, dtype=torch.int64)
        if self.normalization is not None:
            fbank = self.normalization.apply(fbank)
        valid = torch.tensor(min(num_frames, self.features.target_frames), dtype=torch.int64)
        return {"features": fbank, "target": target, "num_frames": valid, "clip_id": clip.clip_id}

    def __getitems__(self, indices: Sequence[int]) -> Sequence[dict[str, object]]:
        """The items ``indices``, equal to ``[self[i] for i in indices]``.

        A DataLoader calls it with the indices of each batch. Unaugmented items of a cached
        dataset are read from the cache in one copy and normalised together, and the list
        returned also holds them collated (``ClipItems.batch``), which :func:`collate_clips`
        hands on without stacking them again. Otherwise (audio to decode, or augmentation,
        which draws per item) the items are made one by one.
        """
        if self._cache_rows is None or self._augments:
            return [self[index] for index in indices]
        rows = [self._cache_rows[index] for index in indices]
        fbanks, num_frames = self.cache.read(rows)  # a new tensor: normalised in place
        if self.normalization is not None:
            self.normalization.apply_(fbanks)
        target_frames = self.features.target_frames
        batch = {
            "features": fbanks,
            "target": torch.tensor([self.clips[i].label for i in indices], dtype=torch.int64),
            "num_frames": torch.tensor(
                [min(n, target_frames) for n in num_frames], dtype=torch.int64
            ),
            "clip_id": [self.clips[i].clip_id for i in indices],
        }
        return ClipItems(batch)

    def _generator(self, index: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1, np.uint64)
        return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))

    def _mixup(self, index: int, generator: torch.Generator) -> tuple[Tensor, Tensor, int]:
        """The (possibly mixed) un-normalised fbank of a training item, its target and frames."""
        clip = self.clips[index]
        mix = self.soft_targets and float(torch.rand((), generator=generator)) < self.mixup.rate
        if not mix:
            target = (
                mixup_targets(clip.label, clip.label, 1.0, self.num_classes)
                if self.soft_targets
                else torch.tensor(clip.label, dtype=torch.int64)
            )
            fbank, num_frames = self._fbank(index)
            return fbank, target, num_frames
        # another clip, uniformly among the len - 1 others
        other_index = int(torch.randint(len(self.clips) - 1, (), generator=generator))
        other_index += other_index >= index
        other = self.clips[other_index]
        lam = self.mixup.sample_lambda(generator)
        if self.cache is None:
            rate = self.features.sample_rate
            mixed = mix_waveforms(
                audio.load_audio(clip.path, rate), audio.load_audio(other.path, rate), lam
            )
            try:
                frames = compute_fbank_frames(mixed, self.features)
            except ValueError as err:
                raise audio.AudioError(f"Audio file {clip.path}: {err}") from err
            fbank, frames_a = pad_or_crop(frames, self.features.target_frames), frames.shape[0]
        else:
            fbank_a, frames_a = self._fbank(index)
            fbank_b, frames_b = self._fbank(other_index)
            fbank = mix_fbanks(fbank_a, fbank_b, lam, frames_a, frames_b)
        return fbank, mixup_targets(clip.label, other.label, lam, self.num_classes), frames_a

    def _fbank(self, index: int) -> tuple[Tensor, int]:
        """Un-normalised padded fbank of clip ``index`` and its frame count before padding."""
        if self._cache_rows is not None:
            fbanks, num_frames = self.cache.read([self._cache_rows[index]])
            return fbanks[0], num_frames[0]
        path = self.clips[index].path
        frames = load_fbank_frames(path, self.features)
        return pad_or_crop(frames, self.features.target_frames), frames.shape[0]


__all__ = ["Clip", "ClipDataset", "ClipItems", "collate_clips"]
