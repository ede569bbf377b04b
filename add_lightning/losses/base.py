"""The loss interfaces: logit losses and embedding losses.

A *logit loss* (cross-entropy, focal) scores the classifier head's logits; an *embedding loss*
(ADD, OPL) shapes the embedding space and reports its named terms.
:class:`~add_lightning.losses.ClassificationLoss` (``losses/classification.py``) adds one of
each. This module knows no concrete loss.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn


class LossOutput(NamedTuple):
    """A total to minimise and its named parts for logging (``"ce"``, ``"add/mu_p"``, ...)."""

    total: Tensor
    terms: dict[str, Tensor]


class LogitLoss(nn.Module):
    """Base class of losses on logits: ``forward(logits [B, C], targets) -> 0-dim tensor``."""

    name: str = "logits"

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class EmbeddingLoss(nn.Module):
    """Base class of losses on embeddings.

    Subclasses implement :meth:`compute`, returning the weighted total and the unweighted
    terms; ``forward`` returns the total alone.
    """

    name: str = "embedding"

    def compute(self, embeddings: Tensor, targets: Tensor) -> LossOutput:  # pragma: no cover
        raise NotImplementedError

    def forward(self, embeddings: Tensor, targets: Tensor) -> Tensor:
        return self.compute(embeddings, targets).total
