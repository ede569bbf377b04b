"""Embedding extractors: :class:`Backbone` (the contract) and its implementations.

``forward`` takes a ``[B, T, F]`` fbank (AST, BEATs) or a ``[B, N]`` padded waveform
(HFAudioEncoder) and returns ``[B, D]``.
"""

from add_lightning.models.backbones.ast import ASTBackbone
from add_lightning.models.backbones.base import Backbone
from add_lightning.models.backbones.beats import BEATsBackbone
from add_lightning.models.backbones.hf_audio import HFAudioEncoder

__all__ = ["ASTBackbone", "BEATsBackbone", "Backbone", "HFAudioEncoder"]
