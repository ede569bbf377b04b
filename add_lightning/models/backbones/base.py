"""What a backbone offers the rest of the package: :class:`Backbone`, with its defaults."""

from __future__ import annotations

import abc
from typing import Any

from torch import Tensor, nn

__all__ = ["Backbone"]


class Backbone(nn.Module, abc.ABC):
    """An embedding extractor: the contract that ``AudioClassifier``, the CLI, ``classify`` and
    ``export`` rely on.

    A backbone sets :attr:`embedding_dim` and implements ``forward``; every other member has
    the default given here, which a backbone overrides where it does not hold (``ASTBackbone``
    has a fixed :attr:`input_shape`, ``BEATsBackbone`` takes a padding mask, ``HFAudioEncoder``
    takes waveforms at its own :attr:`sample_rate`). ``tests/test_backbone_contract.py`` checks
    every backbone against this contract.

    Attributes:
        embedding_dim: ``D``, the size of the embeddings ``forward`` returns (set in
            ``__init__``).
        accepts_padding_mask: Whether ``forward`` takes ``padding_mask [B, T]`` (True at padding
            frames or samples) as its second argument; False: the padded input alone.
        sample_rate: The rate of the waveforms ``forward`` takes; None for a backbone of fbank
            features, whose rate is the data's.

    Shape:
        - features: ``[B, T, F]`` fbank frames, or ``[B, N]`` waveforms
        - padding_mask: ``[B, T]`` (``[B, N]``) bool, where ``accepts_padding_mask``
        - output: ``[B, D]``
    """

    embedding_dim: int
    accepts_padding_mask: bool = False
    sample_rate: int | None = None

    @abc.abstractmethod
    def forward(self, features: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """One embedding per clip, ``[B, D]``."""

    @property
    def input_shape(self) -> tuple[int | None, int | None] | None:
        """``(T, F)`` the backbone requires (an entry None where any size goes); None: any shape.

        Where set, the CLI refuses data of another shape before computing anything and
        Lightning's model summary runs a forward pass on zeros of it (its FLOP count).
        """
        return None

    @property
    def min_samples(self) -> int:
        """The fewest waveform samples a clip needs (``classify`` refuses shorter ones)."""
        return 1

    def checkpoint_init_args(self) -> dict[str, Any] | None:
        """Constructor arguments that rebuild this architecture with random weights, or None.

        ``AudioClassifier`` stores them in its checkpoints in place of the arguments given
        (which may name pretrained weights), so that loading a checkpoint, whose ``state_dict``
        fills the weights, needs nothing but the file. None keeps the arguments given.
        """
        return None

    def epoch_statistics(self) -> dict[str, Tensor]:
        """0-dim values the backbone reports of itself once per training epoch (logged as
        ``train/<key>``); none by default."""
        return {}

    def release_dropped_gradients(self) -> None:
        """Called before each optimizer step: clears gradients added only for DDP (BEATs'
        layer drop); nothing by default."""
