"""The embedding metrics of ``AudioClassifier``'s evaluation: batches in, epoch values out."""

from __future__ import annotations

from torch import Tensor

from add_lightning.metrics import EmbeddingGeometry, EmbeddingRetrieval

__all__ = ["embedding_scalars", "update_embedding_metrics"]


def update_embedding_metrics(
    embeddings: Tensor, labels: Tensor, *metrics: EmbeddingGeometry | EmbeddingRetrieval | None
) -> None:
    """Adds a batch to each metric given (None: a metric not computed at this stage).

    Shape:
        - embeddings: ``[B, D]`` (any float dtype; the metrics take float32)
        - labels: ``[B]`` class ids
    """
    for metric in metrics:
        if metric is not None:
            metric.update(embeddings.float(), labels)


def embedding_scalars(
    stage: str, geometry: EmbeddingGeometry, retrieval: EmbeddingRetrieval | None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The epoch's scalars to log and the geometry's whole output; resets both metrics.

    ``compute`` synchronises each metric over the processes (torchmetrics). The scalars are
    ``<stage>/geometry/<key>`` (the 0-dim statistics of ``geometry``; the class-pair matrices
    are left to :class:`~add_lightning.models.ClassPairHeatmaps`) and
    ``<stage>/retrieval/<key>``, as float32.
    """
    statistics = geometry.compute()
    geometry.reset()
    scalars = {f"{stage}/geometry/{k}": v.float() for k, v in statistics.items() if v.ndim == 0}
    if retrieval is not None:
        scalars.update(
            {f"{stage}/retrieval/{k}": v.float() for k, v in retrieval.compute().items()}
        )
        retrieval.reset()
    return scalars, statistics
