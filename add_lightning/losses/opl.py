"""Orthogonal Projection Loss as an :class:`EmbeddingLoss`."""

from __future__ import annotations

from torch import Tensor

from add_lightning.checks import check_weight
from add_lightning.losses.base import EmbeddingLoss, LossOutput
from add_lightning.losses.distributed import training_batch
from add_lightning.losses.functional import opl_terms


class OrthogonalProjectionLoss(EmbeddingLoss):
    """Orthogonal Projection Loss (Ranasinghe et al., ICCV 2021), added to cross-entropy.

    ``weight * ((1 - mean same-class cos) + gamma * mean |different-class cos|)`` on
    L2-normalised embeddings; see :func:`add_lightning.losses.functional.opl_terms`.

    The defaults (``gamma=2``, ``weight=0.1``) are the loss-class defaults of the OPL authors'
    code, which the ADD authors used for their baseline; the OPL paper's CIFAR experiments
    use ``gamma=0.5``. Soft targets are supported through label similarity.

    Args:
        gamma: Weight of the different-class term.
        weight: Weight of the whole loss relative to cross-entropy.
        gather_distributed: As for :class:`~add_lightning.losses.ADDLoss`.
    """

    name = "opl"

    def __init__(
        self, gamma: float = 2.0, weight: float = 0.1, gather_distributed: bool = True
    ) -> None:
        super().__init__()
        check_weight("gamma", gamma)
        check_weight("weight", weight)
        self.gamma = gamma
        self.weight = weight
        self.gather_distributed = gather_distributed

    def compute(self, embeddings: Tensor, targets: Tensor) -> LossOutput:
        embeddings, targets = training_batch(self, embeddings, targets)
        terms = opl_terms(embeddings, targets)
        total = self.weight * (terms["intra"] + self.gamma * terms["inter"])
        return LossOutput(total, terms)
