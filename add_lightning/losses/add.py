"""The Angular Distance Distribution loss as an :class:`EmbeddingLoss`."""

from __future__ import annotations

from torch import Tensor

from add_lightning.checks import check_weight
from add_lightning.losses.base import EmbeddingLoss, LossOutput
from add_lightning.losses.distributed import training_batch
from add_lightning.losses.functional import add_terms


class ADDLoss(EmbeddingLoss):
    """Angular Distance Distribution loss (Almudévar et al.).

    Hard targets: ``lambda_mu_p mu_p + lambda_sigma_p sigma_p + lambda_mu_n mu_n
    + lambda_sigma_n sigma_n``; soft targets (mixup): ``lambda_mu mu + lambda_sigma_p sigma_p``.
    The terms are those of :func:`add_lightning.losses.functional.add_terms`: ``mu_p`` drives
    intra-class clustering, ``sigma_p`` intra-class equidistance, ``mu_n`` inter-class
    separation (orthogonality) and ``sigma_n`` inter-class equidistance.

    Args:
        lambda_mu_p: Weight of ``mu_p``.
        lambda_sigma_p: Weight of ``sigma_p`` (hard and soft targets).
        lambda_mu_n: Weight of ``mu_n``.
        lambda_sigma_n: Weight of ``sigma_n``.
        lambda_mu: Weight of ``mu`` (soft targets).
        gather_distributed: Under DDP, compute the training statistics over the global batch
            (all ranks' embeddings and targets), as the authors' DataParallel runs did;
            gradients are scaled so that DDP's averaging gives the single-process gradient.
            Only in training mode: evaluation batches stay per rank (each rank evaluates whole
            single-process batches, see ``EvaluationSampler``). Ignored outside a process
            group. False: each rank's statistics over its own batch.

    Shape:
        - embeddings: [B, D]
        - targets: [B] (int64) or [B, C] (float probabilities)
        - output: 0-dim
    """

    name = "add"

    def __init__(
        self,
        lambda_mu_p: float = 1.0,
        lambda_sigma_p: float = 1.0,
        lambda_mu_n: float = 1.0,
        lambda_sigma_n: float = 1.0,
        lambda_mu: float = 1.0,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.weights = {
            "mu_p": lambda_mu_p,
            "sigma_p": lambda_sigma_p,
            "mu_n": lambda_mu_n,
            "sigma_n": lambda_sigma_n,
            "mu": lambda_mu,
        }
        for name, weight in self.weights.items():
            check_weight(f"lambda_{name}", weight)
        self.gather_distributed = gather_distributed

    def compute(self, embeddings: Tensor, targets: Tensor) -> LossOutput:
        embeddings, targets = training_batch(self, embeddings, targets)
        terms = add_terms(embeddings, targets)
        total = sum(self.weights[name] * value for name, value in terms.items())
        return LossOutput(total, terms)

    def extra_repr(self) -> str:
        return ", ".join(f"lambda_{k}={v}" for k, v in self.weights.items())
