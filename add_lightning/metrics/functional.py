"""Pairwise cosine-distance geometry of an embedding set, computed in row chunks.

The pure core of :class:`add_lightning.metrics.EmbeddingGeometry`. With L2-normalised
embeddings ``z`` (every non-zero row at unit length, zero rows zero) and the cosine distance
``d(a, b) = 1 - a·b``, it reports over all ordered pairs ``(i, j), i != j``:

- the four statistics of the ADD loss (docs/method.md): ``mu_p``/``sigma_p`` over
  ``D_p = {d² : y_i == y_j}`` and ``mu_n``/``sigma_n`` over ``D_n = {(1 - d)² : y_i != y_j}``;
- mean, standard deviation and coefficient of variation of plain ``d`` over same-class
  (``intra_class/*``) and different-class (``inter_class/*``) pairs;
- the ``C×C`` matrices over class pairs of the mean of ``d`` and of its coefficient of variation
  (the analysis figure of the paper), and the number of samples per class.

Memory stays bounded: never the whole ``N×N`` matrix, only a ``chunk_size × N`` Gram block and
its centred copy (two buffers reused across blocks, 256 MB by default). Samples are sorted by
class so that a block's rows share one class; ``d`` is symmetric, so each unordered pair is
visited once (columns after the block) and the ordered-pair statistics are rebuilt from the two
orientations. Per class pair the running count, mean and centred sum of squares (``M2``) are
merged in float64 with Chan et al.'s parallel update, which avoids the cancellation of variances
taken from raw power sums.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
from torch import Tensor

from add_lightning.checks import check_int
from add_lightning.tensor_utils import compute_dtype, normalize_rows

__all__ = ["GEOMETRY_SCALAR_KEYS", "mask_empty_class_pairs", "pairwise_geometry"]

# Keys of the scalar entries of :func:`pairwise_geometry`'s result, in a stable order for logging.
GEOMETRY_SCALAR_KEYS: tuple[str, ...] = (
    "mu_p",
    "sigma_p",
    "mu_n",
    "sigma_n",
    "intra_class/mean",
    "intra_class/std",
    "intra_class/cv",
    "inter_class/mean",
    "inter_class/std",
    "inter_class/cv",
)

# Copies of a row block alive at once: the Gram block and its centred copy in _column_moments
# (the loss terms overwrite the Gram block in place).
_BLOCK_COPIES = 2
# Default budget for one row block, so that the peak stays far below 4 GB at N = 100,000.
_DEFAULT_BLOCK_BYTES = 256 * 1024**2


class _Moments(NamedTuple):
    """Count, mean and centred sum of squares (M2) of groups of values; fields share one shape."""

    count: Tensor
    mean: Tensor
    m2: Tensor


def _merge(a: _Moments, b: _Moments) -> _Moments:
    """Merges two sets of group moments elementwise (Chan, Golub & LeVeque's parallel update)."""
    count = a.count + b.count
    delta = b.mean - a.mean
    weight_b = torch.where(count > 0, b.count / count.clamp_min(1), torch.zeros_like(count))
    mean = a.mean + delta * weight_b
    m2 = a.m2 + b.m2 + delta.square() * a.count * weight_b
    return _Moments(count, mean, m2)


def _pool(moments: _Moments, mask: Tensor) -> _Moments:
    """Pools the groups selected by ``mask`` into one group (0-dim moments)."""
    count = moments.count[mask].sum()
    total = (moments.count * moments.mean)[mask].sum()
    mean = torch.where(count > 0, total / count.clamp_min(1), 0.0)
    m2 = (moments.m2 + moments.count * (moments.mean - mean).square())[mask].sum()
    return _Moments(count, mean, m2)


def _std(moments: _Moments) -> Tensor:
    """Unbiased standard deviation (divide by count - 1); 0 where fewer than 2 values."""
    variance = moments.m2 / (moments.count - 1).clamp_min(1)
    return torch.where(moments.count > 1, variance.clamp_min(0).sqrt(), torch.zeros_like(variance))


def _cv(mean: Tensor, std: Tensor) -> Tensor:
    """Coefficient of variation std/mean; 0 where the mean is 0."""
    safe = torch.where(mean != 0, mean, torch.ones_like(mean))
    return torch.where(mean != 0, std / safe, torch.zeros_like(mean))


def _column_moments(values: Tensor, scratch: Tensor) -> _Moments:
    """Float64 moments of each column of a ``[rows, cols]`` block (centred two-pass).

    A column holds at most ``chunk_size`` values, so the block's own dtype (float32 for float32
    input) is precise enough here; everything pooled across columns and blocks is float64.
    ``scratch`` is a flat buffer of at least ``values.numel()`` elements for the centred copy.
    """
    rows, cols = values.shape
    if values.numel() == 0:
        return _zero_moments((cols,), values.device)
    mean = values.mean(dim=0)
    centred = torch.sub(values, mean, out=scratch[: values.numel()].view(rows, cols))
    m2 = centred.square_().sum(dim=0)
    count = torch.full((cols,), float(rows), dtype=torch.float64, device=values.device)
    return _Moments(count, mean.double(), m2.double())


def _group_columns(moments: _Moments, groups: Tensor, num_groups: int) -> _Moments:
    """Pools per-column moments into per-group moments (``groups`` gives each column's group)."""
    count = moments.mean.new_zeros(num_groups).index_add_(0, groups, moments.count)
    total = moments.mean.new_zeros(num_groups).index_add_(0, groups, moments.count * moments.mean)
    mean = total / count.clamp_min(1)
    spread = moments.m2 + moments.count * (moments.mean - mean[groups]).square()
    m2 = moments.mean.new_zeros(num_groups).index_add_(0, groups, spread)
    return _Moments(count, mean, m2)


def _one_hot_moments(values: Tensor, group: int, num_groups: int) -> _Moments:
    """Moments of 1-D float64 ``values`` as group ``group`` of ``num_groups`` (others empty)."""
    moments = _zero_moments((num_groups,), values.device)
    if values.numel() > 0:
        var, mean = torch.var_mean(values, correction=0)
        moments.count[group] = values.numel()
        moments.mean[group] = mean
        moments.m2[group] = var * values.numel()
    return moments


def _zero_moments(shape: tuple[int, ...], device: torch.device) -> _Moments:
    """Empty float64 moments of the given shape."""
    return _Moments(*(torch.zeros(shape, dtype=torch.float64, device=device) for _ in range(3)))


def _merge_row_(moments: _Moments, row: _Moments, index: int) -> None:
    """Merges ``row`` into row ``index`` of the 2-D ``moments``, in place."""
    merged = _merge(_Moments(*(field[index] for field in moments)), row)
    for field, value in zip(moments, merged):
        field[index] = value


def _check_positive_int(name: str, value: object) -> None:
    """``checks.check_int`` with the metrics' message ("... to be a positive int, got 0")."""
    try:
        check_int(name, value)
    except ValueError:
        raise ValueError(
            f"Expected argument `{name}` to be a positive int, got {value!r}"
        ) from None


def _validate(
    embeddings: Tensor, targets: Tensor, num_classes: int, chunk_size: int | None = None
) -> None:
    """Raises ``ValueError`` naming the argument when the inputs break the contract."""
    _check_positive_int("num_classes", num_classes)
    if chunk_size is not None:
        _check_positive_int("chunk_size", chunk_size)
    if embeddings.ndim != 2:
        raise ValueError(
            "Expected argument `embeddings` to have shape [N, D], "
            f"got shape {tuple(embeddings.shape)}"
        )
    if not embeddings.is_floating_point():
        raise ValueError(
            f"Expected argument `embeddings` to be a floating tensor, got dtype {embeddings.dtype}"
        )
    if targets.ndim != 1 or targets.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"Expected argument `targets` to have shape [N] = [{embeddings.shape[0]}] (one class "
            f"per embedding), got shape {tuple(targets.shape)}"
        )
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(
            f"Expected argument `targets` to hold integer class ids, got dtype {targets.dtype}"
        )
    if targets.numel() > 0:
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"Expected argument `targets` in [0, num_classes - 1] = [0, {num_classes - 1}], "
                f"got values in [{low}, {high}]"
            )


def _row_blocks(class_starts: list[int], chunk_size: int) -> list[tuple[int, int, int]]:
    """Splits each class's rows (sorted by class) into blocks ``(class, start, end)``."""
    blocks = []
    for label, (start, stop) in enumerate(itertools.pairwise(class_starts)):
        blocks.extend(
            (label, row, min(row + chunk_size, stop)) for row in range(start, stop, chunk_size)
        )
    return blocks


def pairwise_geometry(
    embeddings: Tensor,
    targets: Tensor,
    num_classes: int,
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """Computes the cosine-distance geometry of a set of labelled embeddings.

    Embeddings are L2-normalised at any scale (zero vectors stay zero, so their distance to
    anything is 1) and ``d(a, b) = 1 - a·b``. All statistics run over the ordered
    pairs ``(i, j), i != j``; standard deviations are unbiased (divide by count - 1). An empty
    set, or fewer than 2 values for a standard deviation, gives 0, never NaN; a coefficient of
    variation ``std / mean`` is 0 where the mean is 0. When embeddings nearly coincide, ``d`` is
    dominated by rounding and its coefficient of variation is not meaningful.

    Gram blocks are computed in float64 for float64 input and in float32 otherwise, and so are
    the per-column moments of a block (at most ``chunk_size`` values each); everything pooled
    across columns and blocks is float64. Results are float64 for float64 input, else float32.

    Args:
        embeddings: The embeddings, any floating dtype, on any device.
        targets: Integer class id of each embedding, in ``[0, num_classes - 1]``.
        num_classes: Number of classes ``C``; classes may have no sample.
        chunk_size: Rows per Gram block (at most ``2 × chunk_size × N`` values are held at
            once). Default: as many rows as fit in 256 MB.

    Returns:
        A dict of tensors on the device of ``embeddings``:

        - ``mu_p``, ``sigma_p``: mean and std of ``d²`` over same-class pairs (ADD's ``D_p``).
        - ``mu_n``, ``sigma_n``: mean and std of ``(1 - d)²`` over different-class pairs
          (ADD's ``D_n``).
        - ``intra_class/mean``, ``intra_class/std``, ``intra_class/cv``: mean, std and
          coefficient of variation of ``d`` over same-class pairs.
        - ``inter_class/mean``, ``inter_class/std``, ``inter_class/cv``: the same over
          different-class pairs.
        - ``class_mean``: ``[a, b]`` = mean of ``d(z_i, z_j)`` over ``y_i = a, y_j = b, i != j``;
          0 where there is no such pair (e.g. a class without samples). Symmetric.
        - ``class_cv``: ``[a, b]`` = coefficient of variation of the same values; 0 where fewer
          than 2 pairs or a zero mean. Symmetric.
        - ``class_count``: int64, number of samples of each class, to mask empty classes in plots.

    Shape:
        - embeddings: ``[N, D]``
        - targets: ``[N]``
        - output: scalars ``[]``; ``class_mean``, ``class_cv``: ``[C, C]``; ``class_count``: ``[C]``

    Raises:
        ValueError: If ``num_classes`` or ``chunk_size`` is not a positive int, or if the shapes,
            dtypes or class ids of ``embeddings`` and ``targets`` are not as described.
    """
    _validate(embeddings, targets, num_classes, chunk_size)
    num_samples = embeddings.shape[0]
    device = embeddings.device
    dtype = compute_dtype(embeddings)
    if chunk_size is None:
        row_bytes = _BLOCK_COPIES * max(num_samples, 1) * torch.finfo(dtype).bits // 8
        chunk_size = max(1, _DEFAULT_BLOCK_BYTES // row_bytes)

    # Sorting by class makes each block's rows one class and each class a contiguous segment.
    targets = targets.to(device=device, dtype=torch.long)
    order = torch.argsort(targets, stable=True)
    labels = targets[order]
    # One sorted copy, normalised in place.
    z = normalize_rows(embeddings.index_select(0, order), dtype)
    class_count = torch.bincount(labels, minlength=num_classes)
    class_starts = [0, *torch.cumsum(class_count, 0).tolist()]

    # Moments per class pair (row class, column class) of the cosine g = z_i·z_j = 1 - d and of
    # the ADD loss terms w (d² = (1 - g)² for same-class pairs, (1 - d)² = g² otherwise), over
    # the unordered pairs i < j of the sorted samples.
    cosine = _zero_moments((num_classes, num_classes), device)
    loss_term = _zero_moments((num_classes, num_classes), device)
    # Two block buffers allocated once: fresh large allocations per block cost page faults.
    block_rows = min(chunk_size, max(class_count.tolist(), default=0))
    workspace = z.new_empty(_BLOCK_COPIES, block_rows * num_samples)
    for label, start, stop in _row_blocks(class_starts, chunk_size):
        rows = z[start:stop]
        # Pairs with every later sample: per-column moments pooled by column class. The first
        # `same_class` later columns still belong to the block's class.
        g = workspace[0, : len(rows) * (num_samples - stop)].view(len(rows), num_samples - stop)
        torch.matmul(rows, z[stop:].T, out=g)
        block_cosine = _group_columns(_column_moments(g, workspace[1]), labels[stop:], num_classes)
        same_class = class_starts[label + 1] - stop
        same_class_loss = (1 - g[:, :same_class]).square()
        g.square_()
        g[:, :same_class] = same_class_loss
        block_loss = _group_columns(_column_moments(g, workspace[1]), labels[stop:], num_classes)
        # Pairs inside the block: its strict upper triangle, all of the block's class.
        inner = torch.triu_indices(stop - start, stop - start, offset=1, device=device)
        g = (rows @ rows.T)[inner[0], inner[1]].double()
        block_cosine = _merge(block_cosine, _one_hot_moments(g, label, num_classes))
        block_loss = _merge(block_loss, _one_hot_moments((1 - g).square(), label, num_classes))
        _merge_row_(cosine, block_cosine, label)
        _merge_row_(loss_term, block_loss, label)

    # Ordered pairs: each unordered pair counted in both orientations.
    cosine = _merge(cosine, _Moments(*(field.T for field in cosine)))
    loss_term = _merge(loss_term, _Moments(*(field.T for field in loss_term)))
    distance = cosine._replace(mean=torch.where(cosine.count > 0, 1 - cosine.mean, 0.0))

    same = torch.eye(num_classes, dtype=torch.bool, device=device)
    intra, inter = _pool(distance, same), _pool(distance, ~same)
    positive, negative = _pool(loss_term, same), _pool(loss_term, ~same)
    intra_std, inter_std = _std(intra), _std(inter)
    class_std = _std(distance)
    result = {
        "mu_p": positive.mean,
        "sigma_p": _std(positive),
        "mu_n": negative.mean,
        "sigma_n": _std(negative),
        "intra_class/mean": intra.mean,
        "intra_class/std": intra_std,
        "intra_class/cv": _cv(intra.mean, intra_std),
        "inter_class/mean": inter.mean,
        "inter_class/std": inter_std,
        "inter_class/cv": _cv(inter.mean, inter_std),
        "class_mean": distance.mean,
        "class_cv": _cv(distance.mean, class_std),
    }
    result = {key: value.to(dtype) for key, value in result.items()}
    result["class_count"] = class_count
    return result


def mask_empty_class_pairs(matrix: Tensor, class_count: Tensor) -> Tensor:
    """``class_mean`` or ``class_cv`` of :func:`pairwise_geometry` as float64, NaN where class
    pair ``(a, b)`` has no pair of distinct samples (a class without samples, or ``a = b`` with
    one sample), where the matrix holds 0.

    The one convention for drawing these matrices: an empty cell is NaN (drawn blank), never 0,
    which would show a pair without samples as perfectly close.

    Shape:
        - matrix: ``[C, C]``
        - class_count: ``[C]``, samples per class
        - output: ``[C, C]``, float64
    """
    count = class_count.detach().cpu().to(torch.float64)
    values = matrix.detach().cpu().to(torch.float64)
    if values.shape != (count.numel(), count.numel()):
        raise ValueError(
            f"Expected `matrix` of shape [{count.numel()}, {count.numel()}] (one row per class "
            f"of `class_count`) but got {list(values.shape)}"
        )
    pairs = torch.outer(count, count) - torch.diag(count)
    return torch.where(pairs > 0, values, torch.full_like(values, float("nan")))
