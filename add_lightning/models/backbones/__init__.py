"""Embedding extractors: modules with ``embedding_dim`` and ``forward([B, T, F]) -> [B, D]``."""

from add_lightning.models.backbones.ast import ASTBackbone
from add_lightning.models.backbones.beats import BEATsBackbone
from add_lightning.models.backbones.hf_audio import HFAudioEncoder

__all__ = ["ASTBackbone", "BEATsBackbone", "HFAudioEncoder"]
