"""AST's feature normalisation: the statistics, their presets and their computation.

``Normalization.apply`` is AST's ``(x - mean) / (2 * std)``, which gives features of mean 0 and
standard deviation 0.5 when mean/std are the dataset's statistics; ``compute_normalization``
computes those statistics from the un-normalised features of a training split, e.g. a
DataLoader over :class:`RawFeatures`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from add_lightning.checks import check_number, check_positive
from add_lightning.data.workers import worker_context


@dataclass(frozen=True)
class Normalization:
    """AST's feature normalisation ``(x - mean) / (2 * std)`` (output std 0.5 on the dataset).

    Args:
        mean: Mean of the un-normalised features.
        std: Standard deviation of the un-normalised features, > 0.
    """

    mean: float
    std: float

    def __post_init__(self) -> None:
        check_number("mean", self.mean)
        check_positive("std", self.std)

    def apply(self, features: Tensor) -> Tensor:
        """Normalises features of any shape."""
        return (features - self.mean) / (2 * self.std)

    def apply_(self, features: Tensor) -> Tensor:
        """Normalises ``features`` in place (the values of :meth:`apply`) and returns them."""
        return features.sub_(self.mean).div_(2 * self.std)

    @classmethod
    def from_preset(cls, name: str) -> Normalization:
        """The statistics named ``name`` in ``NORMALIZATION_PRESETS``."""
        if name not in NORMALIZATION_PRESETS:
            raise ValueError(
                f"Expected argument `name` to be one of {sorted(NORMALIZATION_PRESETS)} "
                f"but got {name!r}."
            )
        return NORMALIZATION_PRESETS[name]


AUDIOSET_NORMALIZATION = Normalization(mean=-4.2677393, std=4.5689974)
"""AudioSet statistics: the defaults of transformers' ASTFeatureExtractor."""
ESC50_NORMALIZATION = Normalization(mean=-6.6268077, std=5.358466)
"""ESC-50 statistics of the original AST recipe (512 frames)."""
SPEECH_COMMANDS_NORMALIZATION = Normalization(mean=-6.845978, std=5.5654526)
"""Speech Commands V2 statistics of the original AST recipe (128 frames)."""
BEATS_NORMALIZATION = Normalization(mean=15.41663, std=6.55582)
"""BEATs' preprocessing (waveform x 2**15, povey window)."""

NORMALIZATION_PRESETS: Mapping[str, Normalization] = MappingProxyType(
    {
        "audioset": AUDIOSET_NORMALIZATION,
        "esc50": ESC50_NORMALIZATION,
        "speech_commands": SPEECH_COMMANDS_NORMALIZATION,
        "beats": BEATS_NORMALIZATION,
    }
)


class RawFeatureSource(Protocol):
    """Anything indexable for un-normalised, un-augmented features, e.g. ``ClipDataset``."""

    def __len__(self) -> int: ...

    def raw_features(self, index: int) -> Tensor: ...


class RawFeatures(Dataset[Tensor]):
    """The ``raw_features`` of a source (e.g. a ``ClipDataset``) as a dataset of tensors.

    Iterating it reads items 0 .. n - 1 in this process; a ``DataLoader`` over it
    (:func:`raw_feature_loader`) reads them in worker processes, in the same order.
    """

    def __init__(self, source: RawFeatureSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Tensor:
        return self.source.raw_features(index)

    def __iter__(self) -> Iterator[Tensor]:
        return (self.source.raw_features(index) for index in range(len(self.source)))


def raw_feature_loader(source: RawFeatureSource, num_workers: int = 0) -> DataLoader:
    """Every item's raw features in index order, one tensor at a time, from ``num_workers``
    DataLoader workers (0: in this process)."""
    return DataLoader(
        RawFeatures(source),
        batch_size=None,
        num_workers=num_workers,
        multiprocessing_context=worker_context(num_workers),
    )


def compute_normalization(features: Iterable[Tensor]) -> Normalization:
    """Mean and standard deviation of every value of the tensors ``features`` yields.

    Pass the un-normalised, un-augmented features of a training split, padded to
    target_frames as the model sees them, like AST's ``get_norm_stats.py``: e.g.
    ``RawFeatures(dataset)`` or ``raw_feature_loader(dataset, num_workers)``. Accumulates in
    float64 by combining per-tensor means and squared deviations (Chan et al.), so the result
    is the population mean/std over all values, whatever the order or the batching.

    Raises:
        ValueError: If ``features`` yields nothing or its values are constant.
    """
    count, mean, m2 = 0, 0.0, 0.0
    for tensor in features:
        values = tensor.to(torch.float64)
        n = values.numel()
        clip_mean = values.mean().item()
        clip_m2 = ((values - clip_mean) ** 2).sum().item()
        delta = clip_mean - mean
        total = count + n
        mean += delta * n / total
        m2 += clip_m2 + delta**2 * count * n / total
        count = total
    if count == 0:
        raise ValueError("Expected argument `features` to hold at least one clip but it is empty.")
    std = math.sqrt(m2 / count)
    if std == 0:
        raise ValueError(
            f"Expected the values of `features` to vary but all {count} values equal {mean}."
        )
    return Normalization(mean=mean, std=std)


__all__ = [
    "AUDIOSET_NORMALIZATION",
    "BEATS_NORMALIZATION",
    "ESC50_NORMALIZATION",
    "NORMALIZATION_PRESETS",
    "SPEECH_COMMANDS_NORMALIZATION",
    "Normalization",
    "RawFeatureSource",
    "RawFeatures",
    "compute_normalization",
    "raw_feature_loader",
]
