"""Focal loss as a :class:`LogitLoss`."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from add_lightning.checks import check_range, check_weight
from add_lightning.losses.base import LogitLoss
from add_lightning.losses.functional import focal_loss


class FocalLoss(LogitLoss):
    """Focal loss (Lin et al., 2017), ``-alpha_t (1 - p_t)^gamma log p_t``; soft targets too.

    Replaces cross-entropy (the paper's baseline). The paper ran it with hard labels only;
    here mixup's soft targets weight each class's term by its target probability.

    Args:
        gamma: Focusing parameter, >= 0 (0 gives cross-entropy).
        alpha: Optional per-class weights, one per class.
        label_smoothing: Mass in [0, 1) moved from the targets to the uniform distribution.
    """

    name = "focal"

    def __init__(
        self, gamma: float = 2.0, alpha: list[float] | None = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        check_weight("gamma", gamma)
        check_range("label_smoothing", label_smoothing, 0, 1, include_high=False)
        if alpha is not None and not all(math.isfinite(a) and a >= 0 for a in alpha):
            raise ValueError(
                f"Expected argument `alpha` to hold finite weights >= 0 but got {alpha}"
            )
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer(
            "alpha", None if alpha is None else torch.tensor(alpha, dtype=torch.float32)
        )

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.alpha is not None and self.alpha.numel() != logits.shape[-1]:
            raise ValueError(
                f"FocalLoss has {self.alpha.numel()} `alpha` weights but the logits have "
                f"{logits.shape[-1]} classes"
            )
        return focal_loss(logits, targets, self.gamma, self.alpha, self.label_smoothing)
