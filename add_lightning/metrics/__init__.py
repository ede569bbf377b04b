"""Metrics on embeddings: the cosine-distance geometry that the ADD loss shapes, and retrieval.

The torchmetrics classes are imported on first use, so that the functional metrics (used by
`add-lightning figures` and notebooks) load without torchmetrics and what it imports.
"""

from __future__ import annotations

from add_lightning.lazy_imports import lazy_attributes
from add_lightning.metrics.functional import (
    GEOMETRY_SCALAR_KEYS,
    mask_empty_class_pairs,
    pairwise_geometry,
)
from add_lightning.metrics.functional_retrieval import (
    RETRIEVAL_SCALAR_KEYS,
    pairwise_retrieval,
    retrieval_keys,
)

__all__ = [
    "GEOMETRY_SCALAR_KEYS",
    "RETRIEVAL_SCALAR_KEYS",
    "EmbeddingGeometry",
    "EmbeddingRetrieval",
    "mask_empty_class_pairs",
    "pairwise_geometry",
    "pairwise_retrieval",
    "retrieval_keys",
]

_METRIC_MODULES = {
    "EmbeddingGeometry": "add_lightning.metrics.geometry",
    "EmbeddingRetrieval": "add_lightning.metrics.retrieval",
}

__getattr__ = lazy_attributes(__name__, _METRIC_MODULES)
