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
    "padding_mask_from_lengths",
    "scale_gradient",
    "valid_positions",
]


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (bf16, fp16, float32, integers) is computed in
    float32."""
    return torch.promote_types(tensor.dtype, torch.float32)


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
