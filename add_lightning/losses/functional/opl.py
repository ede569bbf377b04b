"""Orthogonal Projection Loss terms (Ranasinghe et al., ICCV 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from add_lightning.losses.functional._pairs import (
    check_embeddings_and_targets,
    off_diagonal,
)
from add_lightning.tensor_utils import normalize_rows


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Weighted mean; 0 when the weights sum to 0 (an empty set of pairs)."""
    total = weights.sum()
    return torch.where(total > 0, (values * weights).sum() / total.clamp_min(1e-12), 0.0)


def opl_terms(embeddings: Tensor, targets: Tensor) -> dict[str, Tensor]:
    r"""The two terms of the Orthogonal Projection Loss on L2-normalised embeddings.

    ``intra = 1 - mean cos(z_i, z_j)`` over same-class pairs :math:`i \ne j` and
    ``inter = mean |cos(z_i, z_j)|`` over different-class pairs; the loss is
    ``intra + gamma * inter`` (Ranasinghe et al., "Orthogonal Projection Loss", ICCV 2021).
    An empty set of pairs gives a term of 0 (the reference code gives ``1 - 0 = 1`` for an
    empty same-class set: a constant, so gradients are identical).

    Soft targets (class probabilities) weight each pair by the cosine similarity
    ``s_ij`` of the L2-normalised label vectors: same-class weight ``s_ij``, different-class
    weight ``1 - s_ij``. One-hot soft targets reproduce the hard-label terms exactly.

    Args:
        embeddings: Embeddings (normalised here).
        targets: Integer class ids, or class probabilities.

    Returns:
        ``{"intra", "inter"}``, each a 0-dim tensor.

    Shape:
        - embeddings: [B, D]
        - targets: [B] (int64) or [B, C] (float)
    """
    soft, targets = check_embeddings_and_targets(embeddings, targets)
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        z = normalize_rows(embeddings)
        cosine = z @ z.T
        pairs = off_diagonal(z.shape[0], z.device).to(cosine.dtype)
        if soft:
            y = normalize_rows(targets).to(cosine.dtype)
            same = y @ y.T
        else:
            same = (targets[:, None] == targets[None, :]).to(cosine.dtype)
        positive = _weighted_mean(cosine, same * pairs)
        intra = torch.where((same * pairs).sum() > 0, 1.0 - positive, 0.0)
        inter = _weighted_mean(cosine.abs(), (1.0 - same) * pairs)
        return {"intra": intra, "inter": inter}
