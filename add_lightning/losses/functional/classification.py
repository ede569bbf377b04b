"""Losses on logits: cross-entropy and focal loss, for hard or soft targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from add_lightning.losses.functional._targets import checked_targets
from add_lightning.tensor_utils import compute_dtype


def _check_logits_and_targets(logits: Tensor, targets: Tensor) -> Tensor:
    """Int64 class ids in ``[0, C)`` or checked probabilities (see ``checked_targets``)."""
    if logits.ndim != 2:
        raise ValueError(
            f"Expected argument `logits` to have shape [B, C] but got {tuple(logits.shape)}"
        )
    if targets.is_floating_point():
        if targets.shape != logits.shape:
            raise ValueError(
                "Expected soft `targets` to have the shape of `logits` "
                f"{tuple(logits.shape)} but got {tuple(targets.shape)}"
            )
    elif targets.shape != logits.shape[:1]:
        raise ValueError(
            f"Expected integer `targets` to have shape [{logits.shape[0]}] "
            f"but got {tuple(targets.shape)}"
        )
    return checked_targets(targets, logits.shape[-1])


def _probabilities(targets: Tensor, num_classes: int, label_smoothing: float, dtype) -> Tensor:
    """Hard or soft targets as class probabilities, smoothed towards uniform."""
    if targets.is_floating_point():
        probabilities = targets.to(dtype)
    else:
        probabilities = F.one_hot(targets, num_classes).to(dtype)
    if label_smoothing:
        probabilities = probabilities * (1.0 - label_smoothing) + label_smoothing / num_classes
    return probabilities


def cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy, ``-sum_c y_c log softmax(logits)_c``, for hard or soft targets.

    Shape:
        - logits: [B, C]
        - targets: [B] (integer class ids) or [B, C] (float probabilities)
        - output: 0-dim, float32 (float64 for float64 logits); 0 for an empty batch
    """
    targets = _check_logits_and_targets(logits, targets)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.to(compute_dtype(logits))
        if logits.shape[0] == 0:  # an empty batch: 0 with a gradient, not the mean of nothing
            return logits.sum()
        if targets.is_floating_point():
            targets = targets.to(logits.dtype)
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    gamma: float = 2.0,
    alpha: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    r"""Mean focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

    ``-sum_c alpha_c y_c (1 - p_c)^gamma log p_c`` with ``p = softmax(logits)``; for a
    one-hot ``y`` this is the familiar ``-alpha_t (1 - p_t)^gamma log p_t``, and soft targets
    (mixup) extend it linearly. ``gamma = 0`` and no ``alpha`` give cross-entropy.

    Shape:
        - logits: [B, C]
        - targets: [B] (int64) or [B, C] (float probabilities)
        - alpha: [C] per-class weights, or None
        - output: 0-dim
    """
    targets = _check_logits_and_targets(logits, targets)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if logits.shape[0] == 0:  # an empty batch: 0 with a gradient, not the mean of nothing
            return logits.sum()
        log_p = F.log_softmax(logits, dim=-1)
        weight = _probabilities(targets, logits.shape[-1], label_smoothing, logits.dtype)
        if gamma:
            # 1 - p computed as -expm1(log p) keeps precision when p is close to 1; the clamp
            # keeps the gradient of x**gamma finite at x = 0 for gamma < 1.
            one_minus_p = (-torch.expm1(log_p)).clamp_min(1e-12)
            weight = weight * one_minus_p.pow(gamma)
        if alpha is not None:
            weight = weight * alpha.to(device=logits.device, dtype=logits.dtype)
        return -(weight * log_p).sum(dim=-1).mean()
