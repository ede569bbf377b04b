"""Embedding extractors: modules with ``embedding_dim`` and ``forward(x) -> [B, D]``.

``x`` is a ``[B, T, F]`` fbank (AST, BEATs) or a ``[B, N]`` padded waveform (HFAudioEncoder).
"""

from add_lightning.models.backbones.ast import ASTBackbone
from add_lightning.models.backbones.beats import BEATsBackbone
from add_lightning.models.backbones.hf_audio import HFAudioEncoder

__all__ = ["ASTBackbone", "BEATsBackbone", "HFAudioEncoder"]
