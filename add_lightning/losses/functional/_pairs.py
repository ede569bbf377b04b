"""Pair masks and masked statistics shared by the pairwise embedding losses."""

from __future__ import annotations

import torch
from torch import Tensor

from add_lightning.losses.functional._targets import checked_targets


def check_embeddings_and_targets(embeddings: Tensor, targets: Tensor) -> tuple[bool, Tensor]:
    """Validate shapes and tell hard from soft targets.

    Args:
        embeddings: Embeddings of shape [B, D].
        targets: Integer class ids of shape [B], or class probabilities of shape [B, C].

    Returns:
        Whether the targets are soft (floating point [B, C]), and the targets as int64 class
        ids or checked probabilities (see ``checked_targets``).

    Raises:
        ValueError: If a shape or dtype does not match the above.
    """
    if embeddings.ndim != 2:
        raise ValueError(
            f"Expected argument `embeddings` to have shape [B, D] but got {tuple(embeddings.shape)}"
        )
    if targets.shape[:1] != embeddings.shape[:1]:
        raise ValueError(
            "Expected argument `targets` to have the batch size of `embeddings` "
            f"({embeddings.shape[0]}) but got shape {tuple(targets.shape)}"
        )
    if targets.is_floating_point():
        if targets.ndim != 2:
            raise ValueError(
                "Expected floating point `targets` to be class probabilities of shape [B, C] "
                f"but got shape {tuple(targets.shape)}"
            )
        return True, checked_targets(targets)
    if targets.ndim != 1:
        raise ValueError(
            f"Expected integer `targets` to have shape [B] but got shape {tuple(targets.shape)}"
        )
    return False, checked_targets(targets)


def off_diagonal(size: int, device: torch.device) -> Tensor:
    """Boolean [size, size] mask that is False on the diagonal (the pairs i == j)."""
    return ~torch.eye(size, dtype=torch.bool, device=device)


def sqrt0(x: Tensor) -> Tensor:
    """Square root whose value and gradient are 0 at 0 (``sqrt``'s gradient is infinite there)."""
    tiny = torch.finfo(x.dtype).tiny
    return torch.where(x > 0, x.clamp_min(tiny).sqrt(), torch.zeros_like(x))


def masked_mean_std(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased standard deviation of ``values`` where ``mask`` is True.

    Two passes (mean, then squared deviations) to avoid the cancellation of the one-pass
    formula in float32. An empty set gives a mean of 0; fewer than two elements give a
    standard deviation of 0, never NaN.

    Shape:
        - values: [B, B]
        - mask: [B, B], boolean
        - outputs: two 0-dim tensors
    """
    weights = mask.to(values.dtype)
    count = weights.sum()
    mean = (values * weights).sum() / count.clamp_min(1.0)
    deviation = (values - mean) * weights
    variance = deviation.pow(2).sum() / (count - 1.0).clamp_min(1.0)
    return mean, sqrt0(variance)
