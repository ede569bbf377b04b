"""The state both embedding metrics share: the whole set's embeddings and class ids."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from add_lightning.metrics.functional import _check_positive_int, _validate

__all__ = ["EmbeddingSetMetric"]


class EmbeddingSetMetric(Metric):
    """A metric of a whole set of embeddings: ``update`` stores, ``compute`` sees everything.

    The states are the concatenated embeddings and targets (``dist_reduce_fx="cat"``): under
    DDP every rank gathers the whole set. Subclasses implement ``compute`` on
    :meth:`stored`.

    Args:
        num_classes: Number of classes C; targets must lie in ``[0, C)``.
        chunk_size: Rows per block of the pairwise computation (None: chosen by the function).
        validate_args: Check the shapes, dtypes and ranges of every ``update``.
        kwargs: torchmetrics ``Metric`` options (``dist_sync_on_step``, ``process_group``, ...).
    """

    is_differentiable = False
    full_state_update = False

    embeddings: list[Tensor] | Tensor
    targets: list[Tensor] | Tensor

    def __init__(
        self,
        num_classes: int,
        chunk_size: int | None = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_positive_int("num_classes", num_classes)
        if chunk_size is not None:
            _check_positive_int("chunk_size", chunk_size)
        self.num_classes = num_classes
        self.chunk_size = chunk_size
        self.validate_args = validate_args
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor, targets: Tensor) -> None:
        """Stores a batch of embeddings and their class ids.

        Args:
            embeddings: Embeddings of the batch (normalised or not).
            targets: Integer class id of each embedding.

        Shape:
            - embeddings: ``[B, D]``
            - targets: ``[B]``
        """
        if self.validate_args:
            _validate(embeddings, targets, self.num_classes)
        self.embeddings.append(embeddings.detach())
        self.targets.append(targets.detach().long())

    def stored(self) -> tuple[Tensor, Tensor]:
        """Everything stored since the last ``reset``: ``[N, D]`` embeddings, ``[N]`` targets."""
        if isinstance(self.embeddings, list) and not self.embeddings:
            empty = torch.zeros(0, 1, device=self.device)
            return empty, torch.zeros(0, dtype=torch.long, device=self.device)
        return dim_zero_cat(self.embeddings), dim_zero_cat(self.targets)
