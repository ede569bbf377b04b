"""Pure functions of (embeddings or logits, targets): the maths of every loss."""

from add_lightning.losses.functional.add import add_terms
from add_lightning.losses.functional.classification import cross_entropy, focal_loss
from add_lightning.losses.functional.opl import opl_terms

__all__ = ["add_terms", "cross_entropy", "focal_loss", "opl_terms"]
