"""Retrieval over an embedding set by cosine similarity, each sample querying all others.

The pure core of :class:`add_lightning.metrics.EmbeddingRetrieval`. Every sample ``i`` is a
query; the references are all other samples, ranked by decreasing cosine similarity
``z_i·z_j`` of the L2-normalised embeddings (zero rows stay zero). With ``R_i`` the number of
other samples of ``i``'s class and ``rel_i(r)`` = 1 when the reference at rank ``r`` shares
``i``'s class, the definitions of Musgrave et al., "A Metric Learning Reality Check" (ECCV
2020), as pytorch-metric-learning's ``AccuracyCalculator`` computes them, are

- ``precision_at_1``: mean of ``rel_i(1)``;
- ``r_precision``: mean of ``(1 / R_i) * sum_{r <= R_i} rel_i(r)``;
- ``map_at_r``: mean of ``(1 / R_i) * sum_{r <= R_i} rel_i(r) * P_i(r)``, where ``P_i(r)`` is
  the precision among the first ``r`` references;

each averaged over the queries with ``R_i >= 1`` (a sample alone in its class has nothing to
retrieve). ``knn<k>_acc`` is the accuracy of the leave-one-out k-nearest-neighbour classifier
over *all* queries: the class with the most votes among the ``k`` nearest references; a tie
between classes goes to the one whose best-ranked member is nearer; with fewer than ``k``
references, all of them vote.

Equal similarities are ranked by sample index (as a stable sort would), so results are
deterministic. Each query ranks only as deep as it needs (``max(R_i, k)`` references, found with
``topk`` in time linear in ``N``), and memory stays bounded: queries are processed in row blocks
of ``chunk_size × N`` similarities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from add_lightning.metrics.functional import _check_positive_int, _validate
from add_lightning.tensor_utils import compute_dtype, normalize_rows

__all__ = ["RETRIEVAL_SCALAR_KEYS", "pairwise_retrieval", "retrieval_keys"]

# The keys that do not depend on the chosen k of the k-NN classifier, in logging order.
RETRIEVAL_SCALAR_KEYS: tuple[str, ...] = ("precision_at_1", "r_precision", "map_at_r")

# Bytes per similarity of a block at most: the similarities (float32), the sort's values and
# int64 indices, then over the ranked columns the gathered labels (int64), three boolean masks,
# the cumulative hit count (int64) and two float64 precision arrays; rounded up.
_BYTES_PER_ENTRY = 64
_DEFAULT_BLOCK_BYTES = 256 * 1024**2


def retrieval_keys(knn_k: Sequence[int]) -> tuple[str, ...]:
    """The keys of :func:`pairwise_retrieval`'s result for the k-NN sizes ``knn_k``."""
    return (*RETRIEVAL_SCALAR_KEYS, *(f"knn{k}_acc" for k in knn_k))


def _check_knn_k(knn_k: Sequence[int]) -> tuple[int, ...]:
    if isinstance(knn_k, (int, str)) or not isinstance(knn_k, Sequence):
        raise ValueError(
            f"Expected argument `knn_k` to be a sequence of positive ints, got {knn_k!r}"
        )
    for k in knn_k:
        _check_positive_int("knn_k", k)
    if len(set(knn_k)) != len(knn_k):
        raise ValueError(f"Expected argument `knn_k` to hold distinct values, got {list(knn_k)}")
    return tuple(knn_k)


def _ranked_references(similarity: Tensor, depth: int) -> Tensor:
    """Column indices of the ``depth`` largest entries of each row, in decreasing order, equal
    values by increasing index: a stable descending sort, truncated.

    ``topk`` (linear in the row length) selects them; its order among equal values, and which
    of several values equal to the last one it keeps, are unspecified, so the kept entries are
    reordered stably and the rare rows with a tie across the cut are sorted in full.

    Shape:
        - similarity: ``[Q, N]``
        - output: ``[Q, depth]``, int64
    """
    values, order = torch.topk(similarity, depth, dim=1, sorted=False)
    order, by_index = order.sort(dim=1)
    values = values.gather(1, by_index)
    values, by_value = values.sort(dim=1, descending=True, stable=True)
    order = order.gather(1, by_value)
    last = values[:, -1:]
    cut_ties = (similarity == last).sum(dim=1) > (values == last).sum(dim=1)
    if cut_ties.any():
        rows = cut_ties.nonzero().squeeze(1)
        full = torch.sort(similarity[rows], dim=1, descending=True, stable=True).indices
        order[rows] = full[:, :depth]
    return order


def _knn_correct(ranked: Tensor, labels: Tensor, k: int, num_classes: int) -> Tensor:
    """Whether the majority vote of the first ``k`` ranked labels is ``labels`` (bool ``[Q]``).

    Votes per class, ties broken towards the class seen first in the ranking: the score
    ``votes * (k + 1) - first_rank`` orders classes by votes, then by nearness.
    """
    top = ranked[:, :k]
    rows, width = top.shape
    votes = torch.zeros(rows, num_classes, dtype=torch.long, device=top.device)
    votes.scatter_add_(1, top, torch.ones_like(top))
    first = torch.full((rows, num_classes), width, dtype=torch.long, device=top.device)
    position = torch.arange(width, device=top.device).expand(rows, width)
    first.scatter_reduce_(1, top, position, reduce="amin")
    score = votes * (width + 1) - first
    return score.argmax(dim=1) == labels


def pairwise_retrieval(
    embeddings: Tensor,
    targets: Tensor,
    num_classes: int,
    knn_k: Sequence[int] = (5,),
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """Computes retrieval metrics and k-NN accuracies of a set of labelled embeddings.

    Definitions in the module docstring. Undefined values are 0, never NaN: with fewer than
    two samples everything is 0, and without a query that has a same-class reference the three
    retrieval metrics are 0 (``AccuracyCalculator`` returns NaN there).

    Similarities are computed in float64 for float64 input and in float32 otherwise; results
    are float64 for float64 input, else float32.

    Args:
        embeddings: The embeddings, any floating dtype, on any device.
        targets: Integer class id of each embedding, in ``[0, num_classes - 1]``.
        num_classes: Number of classes ``C``; classes may have no sample.
        knn_k: Neighbourhood sizes of the k-NN classifier, one ``knn<k>_acc`` each.
        chunk_size: Queries per block (a block holds ``chunk_size × N`` similarities and their
            ranking). Default: as many as fit in 256 MB.

    Returns:
        A dict of 0-dim tensors on the device of ``embeddings``, keys
        :func:`retrieval_keys` ``(knn_k)``.

    Shape:
        - embeddings: ``[N, D]``
        - targets: ``[N]``

    Raises:
        ValueError: If ``num_classes`` or ``chunk_size`` is not a positive int, ``knn_k`` not
            distinct positive ints, or the shapes, dtypes or class ids of ``embeddings`` and
            ``targets`` are not as described.
    """
    _validate(embeddings, targets, num_classes, chunk_size)
    knn_k = _check_knn_k(knn_k)
    num_samples = embeddings.shape[0]
    device = embeddings.device
    dtype = compute_dtype(embeddings)
    if chunk_size is None:
        chunk_size = max(1, _DEFAULT_BLOCK_BYTES // (_BYTES_PER_ENTRY * max(num_samples, 1)))

    labels = targets.to(device=device, dtype=torch.long)
    z = normalize_rows(embeddings, dtype)
    # R_i: the other samples of the query's class.
    relevant = torch.bincount(labels, minlength=num_classes)[labels] - 1
    max_k = max(knn_k)
    keys = retrieval_keys(knn_k)
    sums = {key: torch.zeros((), dtype=torch.float64, device=device) for key in keys}
    for start in range(0, num_samples if num_samples > 1 else 0, chunk_size):
        stop = min(start + chunk_size, num_samples)
        similarity = z[start:stop] @ z.T
        rows = torch.arange(stop - start, device=device)
        similarity[rows, rows + start] = -torch.inf  # the query itself is ranked last
        query_labels, query_relevant = labels[start:stop], relevant[start:stop]
        depth = min(num_samples - 1, max(max_k, int(query_relevant.max())))
        order = _ranked_references(similarity, depth)
        del similarity
        ranked = labels[order]
        hit = ranked == query_labels[:, None]
        ranks = torch.arange(1, depth + 1, device=device)
        within_r = ranks[None, :] <= query_relevant[:, None]
        hits_within_r = hit & within_r
        precision = hit.cumsum(dim=1).double() / ranks
        r_safe = query_relevant.clamp_min(1).double()
        sums["precision_at_1"] += hit[:, 0].double().sum()
        sums["r_precision"] += (hits_within_r.sum(dim=1) / r_safe).sum()
        sums["map_at_r"] += ((precision * hits_within_r).sum(dim=1) / r_safe).sum()
        for k in knn_k:
            correct = _knn_correct(ranked, query_labels, min(k, depth), num_classes)
            sums[f"knn{k}_acc"] += correct.double().sum()

    queries = int((relevant > 0).sum()) if num_samples > 1 else 0
    result = {}
    for key, total in sums.items():
        count = num_samples if key.startswith("knn") else queries
        value = total / count if count > 0 and num_samples > 1 else total.new_zeros(())
        result[key] = value.to(dtype)
    return result
