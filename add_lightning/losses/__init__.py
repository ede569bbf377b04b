"""Losses: cross-entropy, focal, ADD and OPL, composed by :class:`ClassificationLoss`."""

from add_lightning.losses.add import ADDLoss
from add_lightning.losses.base import EmbeddingLoss, LogitLoss, LossOutput
from add_lightning.losses.classification import ClassificationLoss
from add_lightning.losses.cross_entropy import CrossEntropyLoss
from add_lightning.losses.focal import FocalLoss
from add_lightning.losses.opl import OrthogonalProjectionLoss

__all__ = [
    "ADDLoss",
    "ClassificationLoss",
    "CrossEntropyLoss",
    "EmbeddingLoss",
    "FocalLoss",
    "LogitLoss",
    "LossOutput",
    "OrthogonalProjectionLoss",
]
