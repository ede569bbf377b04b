"""Metrics on embeddings: the cosine-distance geometry that the ADD loss shapes."""

from add_lightning.metrics.functional import GEOMETRY_SCALAR_KEYS, pairwise_geometry
from add_lightning.metrics.geometry import EmbeddingGeometry

__all__ = ["GEOMETRY_SCALAR_KEYS", "EmbeddingGeometry", "pairwise_geometry"]
