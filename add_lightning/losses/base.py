"""The loss interface the training module takes from YAML.

A *logit loss* (cross-entropy, focal) scores the classifier head's logits; an *embedding loss*
(ADD, OPL) shapes the embedding space and reports its named terms. :class:`ClassificationLoss`
adds one of each, so "CE + ADD", "focal" or "CE + OPL" are configurations, not code.
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


class ClassificationLoss(nn.Module):
    """A logit loss plus an optional embedding loss: ``L = L_classifier + L_embedding``.

    Args:
        classifier: Loss on the logits; None means :class:`~add_lightning.losses.CrossEntropyLoss`.
        embedding: Loss on the embeddings (e.g. :class:`~add_lightning.losses.ADDLoss`), or None.

    Example (YAML, "CE + ADD")::

        loss:
          class_path: add_lightning.losses.ClassificationLoss
          init_args:
            classifier: {class_path: add_lightning.losses.CrossEntropyLoss}
            embedding: {class_path: add_lightning.losses.ADDLoss}
    """

    def __init__(
        self, classifier: LogitLoss | None = None, embedding: EmbeddingLoss | None = None
    ) -> None:
        super().__init__()
        if classifier is None:
            from add_lightning.losses.cross_entropy import CrossEntropyLoss

            classifier = CrossEntropyLoss()
        if not isinstance(classifier, LogitLoss):
            raise TypeError(
                "Expected argument `classifier` to be a LogitLoss (e.g. CrossEntropyLoss, "
                f"FocalLoss) but got {type(classifier).__name__}"
            )
        if embedding is not None and not isinstance(embedding, EmbeddingLoss):
            raise TypeError(
                "Expected argument `embedding` to be an EmbeddingLoss (e.g. ADDLoss, "
                f"OrthogonalProjectionLoss) or None but got {type(embedding).__name__}"
            )
        self.classifier = classifier
        self.embedding = embedding

    def forward(self, embeddings: Tensor, logits: Tensor, targets: Tensor) -> LossOutput:
        """Total loss and its named terms.

        Shape:
            - embeddings: [B, D]
            - logits: [B, C]
            - targets: [B] (int64) or [B, C] (float probabilities)
        """
        total = self.classifier(logits, targets)
        terms = {self.classifier.name: total.detach()}
        if self.embedding is not None:
            embedding_loss, parts = self.embedding.compute(embeddings, targets)
            total = total + embedding_loss
            terms[self.embedding.name] = embedding_loss.detach()
            terms.update({f"{self.embedding.name}/{k}": v.detach() for k, v in parts.items()})
        return LossOutput(total, terms)
