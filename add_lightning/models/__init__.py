"""Training layer: the LightningModule, backbones, LR schedules, the prediction writer and the
test heat maps."""

from add_lightning.models.backbones import ASTBackbone, Backbone, BEATsBackbone, HFAudioEncoder
from add_lightning.models.classifier import AudioClassifier
from add_lightning.models.heatmaps import ClassPairHeatmaps
from add_lightning.models.optim import WarmupConstantLR, WarmupCosineLR, WarmupExponentialLR
from add_lightning.models.prediction import EmbeddingWriter

__all__ = [
    "ASTBackbone",
    "AudioClassifier",
    "BEATsBackbone",
    "Backbone",
    "ClassPairHeatmaps",
    "EmbeddingWriter",
    "HFAudioEncoder",
    "WarmupConstantLR",
    "WarmupCosineLR",
    "WarmupExponentialLR",
]
