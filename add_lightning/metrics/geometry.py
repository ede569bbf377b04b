"""Embedding-geometry metric: the four ADD properties and class-pair matrices of a set."""

from __future__ import annotations

from torch import Tensor

from add_lightning.metrics.embedding_set import EmbeddingSetMetric
from add_lightning.metrics.functional import pairwise_geometry

__all__ = ["EmbeddingGeometry"]


class EmbeddingGeometry(EmbeddingSetMetric):
    """Cosine-distance geometry of the embeddings of an evaluation set.

    Accumulates ``(embeddings, targets)`` batch by batch (``update``) and, at ``compute``, runs
    :func:`add_lightning.metrics.functional.pairwise_geometry` over all ordered pairs
    ``(i, j), i != j`` of the whole set, with ``d(a, b) = 1 - a·b`` on L2-normalised embeddings
    (zero vectors stay zero). It returns a dict with

    - the statistics of the ADD loss, ``mu_p``, ``sigma_p`` (``d²`` over same-class pairs) and
      ``mu_n``, ``sigma_n`` (``(1 - d)²`` over different-class pairs): the four properties of the
      paper (intra-class clustering and equidistance, inter-class separation and equidistance);
    - ``intra_class/{mean,std,cv}`` and ``inter_class/{mean,std,cv}``: mean, unbiased standard
      deviation and coefficient of variation of plain ``d`` over same- and different-class pairs;
    - ``class_mean`` and ``class_cv`` (``[C, C]``): mean of ``d`` and its coefficient of
      variation for each class pair ``(a, b)``, the heat maps of the paper's analysis figure;
    - ``class_count`` (``[C]``, int64): samples per class, to mask empty classes in plots.

    Undefined values are 0, never NaN: empty sets, standard deviations of fewer than 2 values,
    coefficients of variation with a zero mean, matrix entries of classes without samples.

    The states are the concatenated embeddings and targets (``dist_reduce_fx="cat"``): under DDP
    every rank gathers the whole set and computes the same result. Memory at ``compute`` is the
    set itself plus one bounded row block, never the ``N×N`` matrix. Pass
    ``compute_on_cpu=True`` (a torchmetrics option) to keep the states off the GPU.

    Args:
        num_classes: Number of classes ``C``; targets are in ``[0, C - 1]``.
        chunk_size: Rows per Gram block at ``compute`` (default: bounded to 256 MB of blocks).
        validate_args: Check that targets are in range at each ``update`` (costs a device sync).
        **kwargs: Options of :class:`torchmetrics.Metric` (``compute_on_cpu``,
            ``sync_on_compute``, ``process_group``, ...).

    Shape:
        - embeddings (``update``): ``[N, D]``, floating
        - targets (``update``): ``[N]``, integer class ids
        - output: scalars ``[]``; ``class_mean``, ``class_cv``: ``[C, C]``; ``class_count``: ``[C]``

    Example:
        >>> import torch
        >>> metric = EmbeddingGeometry(num_classes=3)
        >>> metric.update(torch.eye(4, 8), torch.tensor([0, 0, 1, 2]))
        >>> metric.compute()["mu_n"]
        tensor(0.)
    """

    higher_is_better = None

    def compute(self) -> dict[str, Tensor]:
        """Computes the geometry of everything stored since the last ``reset``.

        Returns:
            The dict of :func:`add_lightning.metrics.functional.pairwise_geometry`.
        """
        embeddings, targets = self.stored()
        return pairwise_geometry(embeddings, targets, self.num_classes, self.chunk_size)
