"""Metrics on embeddings: the cosine-distance geometry that the ADD loss shapes, and retrieval."""

from add_lightning.metrics.functional import GEOMETRY_SCALAR_KEYS, pairwise_geometry
from add_lightning.metrics.functional_retrieval import (
    RETRIEVAL_SCALAR_KEYS,
    pairwise_retrieval,
    retrieval_keys,
)
from add_lightning.metrics.geometry import EmbeddingGeometry
from add_lightning.metrics.retrieval import EmbeddingRetrieval

__all__ = [
    "GEOMETRY_SCALAR_KEYS",
    "RETRIEVAL_SCALAR_KEYS",
    "EmbeddingGeometry",
    "EmbeddingRetrieval",
    "pairwise_geometry",
    "pairwise_retrieval",
    "retrieval_keys",
]
