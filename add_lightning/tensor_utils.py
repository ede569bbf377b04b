"""Small tensor helpers that several layers share (losses, metrics, backbones, models).

Imports nothing from the package, so that any module can use it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "compute_dtype",
    "hard_targets",
    "normalize_rows",
    "padding_mask_from_lengths",
    "scale_gradient",
    "valid_positions",
]


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (bf16, fp16, float32, integers) is computed in
    float32."""
    return torch.promote_types(tensor.dtype, torch.float32)


# Zero rows divided by this stay zero (rows are scaled to a largest |entry| of 1 before).
_NORMALIZE_EPS = 1e-12


def normalize_rows(rows: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """L2-normalised ``rows`` in ``dtype``: non-zero rows get unit length, zero rows stay zero.

    Each row is first divided by its largest ``|entry|`` (a constant for autograd: the
    normalisation does not depend on scale, so the gradient is unchanged). Without it the
    float32 squared norm overflows for entries above about 1.8e19 (where ``F.normalize``
    returns a zero vector) or underflows, and rows shorter than its ``eps`` (1e-12) are
    shrunk, not normalised. The input is never modified; without autograd the result is
    normalised in place, one copy of ``rows`` in all.

    Args:
        rows: The vectors, one per row, any dtype.
        dtype: Dtype of the result; default :func:`compute_dtype` of ``rows``.

    Shape:
        - rows: ``[N, D]``
        - output: ``[N, D]``
    """
    z = rows.to(compute_dtype(rows) if dtype is None else dtype)
    scale = z.detach().abs().amax(dim=1, keepdim=True)
    z = z / torch.where(scale > 0, scale, torch.ones_like(scale))
    norm = torch.linalg.vector_norm(z, dim=1, keepdim=True).clamp_min(_NORMALIZE_EPS)
    return z / norm if torch.is_grad_enabled() and z.requires_grad else z.div_(norm)


def hard_targets(target: Tensor) -> Tensor:
    """Class ids of hard ``[B]`` targets or of soft ``[B, C]`` targets (argmax).

    Shape:
        - target: ``[B]`` int64 or ``[B, C]`` float
        - output: ``[B]`` int64
    """
    return target.argmax(dim=-1) if target.ndim == 2 else target


def valid_positions(lengths: Tensor, size: int) -> Tensor:
    """True at the valid positions of padded rows: position ``t`` of row ``b`` when
    ``t < lengths[b]``.

    Shape:
        - lengths: ``[B]`` int
        - output: ``[B, size]`` bool, on the device of ``lengths``
    """
    return torch.arange(size, device=lengths.device) < lengths.reshape(-1, 1)


def padding_mask_from_lengths(num_frames: Tensor, frames: int) -> Tensor:
    """True at padding: frame ``t`` of clip ``b`` when ``t >= num_frames[b]``
    (the negation of :func:`valid_positions`).

    Shape:
        - num_frames: ``[B]`` int
        - output: ``[B, frames]`` bool
    """
    return ~valid_positions(num_frames, frames)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward, gradient multiplied by a constant backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged, whose gradient is multiplied by ``scale`` on the way back (BEATs'
    layer-wise gradient decay; the world-size factor of a gathered DDP batch)."""
    return _ScaleGradient.apply(x, scale)
