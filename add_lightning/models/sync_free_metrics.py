"""torchmetrics objects updated at every training step without waiting for the device.

A training step may synchronise with the device once (``AudioClassifier``'s non-finite loss
check); these metrics, updated at every step, add none. Each works around one behaviour of
torchmetrics 1.9, named with the condition to delete it.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn.functional import one_hot
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassF1Score

__all__ = ["SyncFreeF1Score", "WeightedStepMean"]


class WeightedStepMean(MeanMetric):
    """The mean of per-step values, each weighted by its step's number of clips.

    Upstream: ``MeanMetric`` checks its input for NaN (one synchronisation per update) unless
    ``nan_strategy="disable"``, which also ignores ``weight`` (torchmetrics 1.9). So the check
    is disabled (the values are checked finite where they are computed) and the weight is
    given by repeating the value once per clip. Delete the repetition when ``MeanMetric``
    honours ``weight`` under ``nan_strategy="disable"``.

    Shape:
        - value: ``[]`` (a step's loss term)
    """

    def __init__(self) -> None:
        super().__init__(nan_strategy="disable")

    def update(self, value: Tensor, clips: int) -> None:  # type: ignore[override]
        super().update(value.detach().float().expand(clips))


class SyncFreeF1Score(MulticlassF1Score):
    """Macro ``MulticlassF1Score`` whose update never waits for the device.

    Upstream: torchmetrics counts the confusion matrix with ``torch.bincount``, which on CUDA
    reads its input's largest value back to the host (one synchronisation per update), and with
    ``validate_args`` checks the labels with ``torch.unique`` (another). Here the counts come
    from one-hot matrices and the labels are not validated (the loss has checked them already).
    ``compute`` is torchmetrics' own. Delete when torchmetrics counts without synchronising.

    Shape:
        - preds: ``[B, C]`` logits or probabilities
        - target: ``[B]`` class ids
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes, average="macro", validate_args=False)

    def update(self, preds: Tensor, target: Tensor) -> None:
        predicted = one_hot(preds.argmax(dim=1), self.num_classes)
        truth = one_hot(target.long(), self.num_classes)
        tp = (predicted * truth).sum(dim=0)
        fp = predicted.sum(dim=0) - tp
        fn = truth.sum(dim=0) - tp
        tn = target.numel() - tp - fp - fn
        self.tp, self.fp = self.tp + tp, self.fp + fp
        self.tn, self.fn = self.tn + tn, self.fn + fn
