"""Embedding-retrieval metric: precision@1, R-precision, MAP@R and k-NN accuracy of a set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from add_lightning.metrics.functional import _check_positive_int, _validate
from add_lightning.metrics.functional_retrieval import _check_knn_k, pairwise_retrieval

__all__ = ["EmbeddingRetrieval"]


class EmbeddingRetrieval(Metric):
    """Retrieval by cosine similarity over the embeddings of an evaluation set.

    Accumulates ``(embeddings, targets)`` batch by batch (``update``) and, at ``compute``, runs
    :func:`add_lightning.metrics.functional_retrieval.pairwise_retrieval`: every sample queries
    all others, ranked by cosine similarity (ties by sample index). It returns a dict with

    - ``precision_at_1``, ``r_precision``, ``map_at_r``: the definitions of Musgrave et al.,
      "A Metric Learning Reality Check" (2020), as pytorch-metric-learning's
      ``AccuracyCalculator`` computes them, averaged over the queries that have at least one
      same-class reference;
    - ``knn<k>_acc`` for each ``k`` of ``knn_k``: leave-one-out k-nearest-neighbour accuracy
      over all queries (majority vote; a tie goes to the class whose best-ranked member is
      nearer).

    Undefined values are 0, never NaN. The states are the concatenated embeddings and targets
    (``dist_reduce_fx="cat"``): under DDP every rank gathers the whole set and computes the same
    result. Memory at ``compute`` is the set plus one bounded block of queries, never the
    ``N×N`` matrix; the cost is one ``N×N×D`` product and a sort of every row, about that of
    :class:`~add_lightning.metrics.EmbeddingGeometry`.

    Args:
        num_classes: Number of classes ``C``; targets are in ``[0, C - 1]``.
        knn_k: Neighbourhood sizes of the k-NN classifier.
        chunk_size: Queries per block at ``compute`` (default: bounded to 256 MB).
        validate_args: Check that targets are in range at each ``update`` (costs a device sync).
        **kwargs: Options of :class:`torchmetrics.Metric` (``compute_on_cpu``,
            ``sync_on_compute``, ``process_group``, ...).

    Shape:
        - embeddings (``update``): ``[N, D]``, floating
        - targets (``update``): ``[N]``, integer class ids
        - output: scalars ``[]``

    Example:
        >>> metric = EmbeddingRetrieval(num_classes=2, knn_k=(1,))
        >>> embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> metric.update(embeddings, torch.tensor([0, 0, 1]))
        >>> metric.compute()["map_at_r"]
        tensor(1.)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    embeddings: list[Tensor] | Tensor
    targets: list[Tensor] | Tensor

    def __init__(
        self,
        num_classes: int,
        knn_k: Sequence[int] = (5,),
        chunk_size: int | None = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_positive_int("num_classes", num_classes)
        if chunk_size is not None:
            _check_positive_int("chunk_size", chunk_size)
        self.num_classes = num_classes
        self.knn_k = _check_knn_k(knn_k)
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

    def compute(self) -> dict[str, Tensor]:
        """Computes the retrieval metrics of everything stored since the last ``reset``.

        Returns:
            The dict of :func:`add_lightning.metrics.functional_retrieval.pairwise_retrieval`.
        """
        if isinstance(self.embeddings, list) and not self.embeddings:
            embeddings = torch.zeros(0, 1, device=self.device)
            targets = torch.zeros(0, dtype=torch.long, device=self.device)
        else:
            embeddings, targets = dim_zero_cat(self.embeddings), dim_zero_cat(self.targets)
        return pairwise_retrieval(
            embeddings, targets, self.num_classes, self.knn_k, self.chunk_size
        )
