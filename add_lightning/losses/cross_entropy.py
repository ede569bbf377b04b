"""Cross-entropy as a :class:`LogitLoss`."""

from __future__ import annotations

from torch import Tensor

from add_lightning.checks import check_range
from add_lightning.losses.base import LogitLoss
from add_lightning.losses.functional import cross_entropy


class CrossEntropyLoss(LogitLoss):
    """Cross-entropy for hard or soft (mixup) targets, with optional label smoothing.

    Args:
        label_smoothing: Mass in [0, 1) moved from the targets to the uniform distribution.
    """

    name = "ce"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        check_range("label_smoothing", label_smoothing, 0, 1, include_high=False)
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy(logits, targets, self.label_smoothing)
