"""Embedding-retrieval metric: precision@1, R-precision, MAP@R and k-NN accuracy of a set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from add_lightning.metrics.embedding_set import EmbeddingSetMetric
from add_lightning.metrics.functional_retrieval import _check_knn_k, pairwise_retrieval

__all__ = ["EmbeddingRetrieval"]


class EmbeddingRetrieval(EmbeddingSetMetric):
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
        >>> import torch
        >>> metric = EmbeddingRetrieval(num_classes=2, knn_k=(1,))
        >>> embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> metric.update(embeddings, torch.tensor([0, 0, 1]))
        >>> metric.compute()["map_at_r"]
        tensor(1.)
    """

    higher_is_better = True

    def __init__(
        self,
        num_classes: int,
        knn_k: Sequence[int] = (5,),
        chunk_size: int | None = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, chunk_size, validate_args, **kwargs)
        self.knn_k = _check_knn_k(knn_k)

    def compute(self) -> dict[str, Tensor]:
        """Computes the retrieval metrics of everything stored since the last ``reset``.

        Returns:
            The dict of :func:`add_lightning.metrics.functional_retrieval.pairwise_retrieval`.
        """
        embeddings, targets = self.stored()
        return pairwise_retrieval(
            embeddings, targets, self.num_classes, self.knn_k, self.chunk_size
        )
