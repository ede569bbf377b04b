"""Small tensor helpers that several layers share (losses, metrics, backbones, models).

Imports nothing from the package, so that any module can use it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["compute_dtype", "hard_targets", "scale_gradient"]


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
