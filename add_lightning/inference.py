"""A trained model with everything needed to use it on new audio.

:class:`TrainedModel` is the unit that ``classify`` and ``export`` work on: the classifier
and the feature pipeline it was trained with (filterbank settings, normalisation statistics)
and its class names in id order.
"""

from __future__ import annotations

from dataclasses import dataclass

from add_lightning.data.features import FbankOptions, Normalization
from add_lightning.models.classifier import AudioClassifier

__all__ = ["TrainedModel"]


@dataclass
class TrainedModel:
    """A classifier and the feature pipeline it was trained with.

    Args:
        model: The classifier, in eval mode.
        features: The filterbank settings of training.
        normalization: The normalisation statistics of training.
        class_names: Class names in id order (``len == model.num_classes``).
    """

    model: AudioClassifier
    features: FbankOptions
    normalization: Normalization
    class_names: list[str]

    def __post_init__(self) -> None:
        if len(self.class_names) != self.model.num_classes:
            raise ValueError(
                f"Expected {self.model.num_classes} `class_names` (one per class of the model) "
                f"but got {len(self.class_names)}."
            )
