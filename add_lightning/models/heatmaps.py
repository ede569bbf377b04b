"""Figures of the class-pair geometry (the paper's analysis figure) for TensorBoard.

:class:`ClassPairHeatmaps` draws them from what the model's test epoch computed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from torch import Tensor

from add_lightning.metrics import mask_empty_class_pairs
from add_lightning.models.classifier import AudioClassifier

__all__ = ["ClassPairHeatmaps", "class_pair_heatmap"]

# statistic of EmbeddingGeometry -> (title, colour bar label)
_HEATMAPS = {
    "class_mean": ("mean cosine distance between classes", "mean of d = 1 - cos"),
    "class_cv": ("coefficient of variation of the cosine distance", "std(d) / mean(d)"),
}


def class_pair_heatmap(
    matrix: Tensor | np.ndarray,
    class_names: Sequence[str] | None = None,
    title: str = "",
    colorbar_label: str = "",
    class_count: Tensor | None = None,
) -> Figure:
    """Render a ``C×C`` matrix over class pairs as a heat map.

    Used for ``EmbeddingGeometry``'s ``class_mean`` (mean cosine distance between the
    embeddings of classes a and b) and ``class_cv`` (its coefficient of variation). The figure
    is built with matplotlib's object API (no pyplot state, no display backend needed).

    Args:
        matrix: Values per class pair; NaN (no pair, e.g. a class with one clip) is drawn blank.
        class_names: Tick labels, one per class; class indices when None.
        title: Figure title.
        colorbar_label: Label of the colour bar.
        class_count: Samples per class (``pairwise_geometry``'s ``class_count``): cells without a
            pair of samples, which ``pairwise_geometry`` fills with 0, are drawn blank
            (:func:`~add_lightning.metrics.mask_empty_class_pairs`), not as distance 0.

    Shape:
        - matrix: ``[C, C]``
        - class_count: ``[C]``
    """
    if class_count is not None:
        matrix = mask_empty_class_pairs(torch.as_tensor(matrix), class_count)
    values = matrix.detach().cpu().double().numpy() if isinstance(matrix, Tensor) else matrix
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"Expected `matrix` of shape [C, C] but got {values.shape}")
    num_classes = values.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(
            f"Expected {num_classes} `class_names` (one per matrix row) but got {len(names)}"
        )
    side = min(4.0 + 0.22 * num_classes, 16.0)
    figure = Figure(figsize=(side + 1.0, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(values), cmap="viridis", interpolation="nearest")
    figure.colorbar(image, ax=axes, label=colorbar_label)
    fontsize = 8 if num_classes <= 20 else 5
    axes.set_xticks(range(num_classes), names, rotation=90, fontsize=fontsize)
    axes.set_yticks(range(num_classes), names, fontsize=fontsize)
    axes.set_title(title)
    return figure


class ClassPairHeatmaps(Callback):
    """After ``test``, the images ``test/geometry/{class_mean,class_cv}`` in TensorBoard.

    Draws the two class-pair heat maps of the model's ``last_test_statistics`` (its
    ``EmbeddingGeometry`` output; see ``AudioClassifier``) at the step of that test, for the
    test classes (``unseen_class_names`` when classes were held out of training). Does nothing
    without a TensorBoard logger (the first logger) or on processes other than rank 0.
    """

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not isinstance(pl_module, AudioClassifier) or pl_module.last_test_statistics is None:
            return
        logger = trainer.logger
        if not isinstance(logger, TensorBoardLogger) or not trainer.is_global_zero:
            return
        statistics = pl_module.last_test_statistics
        unseen = pl_module.unseen_class_names
        names = pl_module.class_names if unseen is None else unseen
        step = pl_module.last_test_step_number
        for key, (title, label) in _HEATMAPS.items():
            count = statistics["class_count"]
            figure = class_pair_heatmap(statistics[key], names, title, label, class_count=count)
            logger.experiment.add_figure(f"test/geometry/{key}", figure, step)
