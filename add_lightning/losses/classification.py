"""The loss the training module takes from YAML: a logit loss plus an optional embedding loss.

"CE + ADD", "focal" or "CE + OPL" are configurations of :class:`ClassificationLoss`, not code.
"""

from __future__ import annotations

from torch import Tensor, nn

from add_lightning.losses.base import EmbeddingLoss, LogitLoss, LossOutput
from add_lightning.losses.cross_entropy import CrossEntropyLoss


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
