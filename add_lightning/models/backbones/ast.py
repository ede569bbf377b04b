"""Audio Spectrogram Transformer backbone on Hugging Face transformers' ``ASTModel``."""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import ASTConfig, ASTModel

from add_lightning.hub import checked_pretrained, offline_hint
from add_lightning.models.backbones.base import Backbone

__all__ = ["DEFAULT_AST_CHECKPOINT", "ASTBackbone", "adapt_position_embeddings"]

log = logging.getLogger(__name__)

DEFAULT_AST_CHECKPOINT = "MIT/ast-finetuned-audioset-10-10-0.4593"


def adapt_position_embeddings(
    position_embeddings: Tensor, f_dim: int, t_old: int, t_new: int
) -> Tensor:
    """Adapt AST position embeddings to another number of time patches, as the original AST.

    The first two rows (CLS and distillation tokens) are kept. The patch rows are reshaped to
    their (frequency, time) grid; the centre of the time axis is cut when ``t_new < t_old``,
    the grid is bilinearly interpolated along time when ``t_new > t_old``.

    Args:
        position_embeddings: Pretrained position embeddings.
        f_dim: Number of frequency patches (unchanged).
        t_old: Number of time patches of ``position_embeddings``.
        t_new: Number of time patches wanted.

    Shape:
        - position_embeddings: ``[1, 2 + f_dim * t_old, H]``
        - output: ``[1, 2 + f_dim * t_new, H]``
    """
    expected = 2 + f_dim * t_old
    if position_embeddings.ndim != 3 or position_embeddings.shape[1] != expected:
        raise ValueError(
            f"Expected `position_embeddings` of shape [1, {expected}, H] for a {f_dim}x{t_old} "
            f"patch grid but got {tuple(position_embeddings.shape)}"
        )
    hidden = position_embeddings.shape[-1]
    tokens, patches = position_embeddings[:, :2], position_embeddings[:, 2:]
    grid = patches.reshape(1, f_dim, t_old, hidden).permute(0, 3, 1, 2)  # [1, H, F, T]
    if t_new < t_old:
        start = t_old // 2 - t_new // 2
        grid = grid[..., start : start + t_new]
    elif t_new > t_old:
        grid = nn.functional.interpolate(
            grid, size=(f_dim, t_new), mode="bilinear", align_corners=False
        )
    patches = grid.permute(0, 2, 3, 1).reshape(1, f_dim * t_new, hidden)
    return torch.cat([tokens, patches], dim=1)


def _load_pretrained(pretrained: str) -> ASTModel:
    """Load ``ASTModel`` from a hub id or a ``save_pretrained`` directory, with clear errors."""
    pretrained = checked_pretrained(pretrained, "ASTModel.save_pretrained")
    try:
        return ASTModel.from_pretrained(pretrained)
    except OSError as error:
        hint = offline_hint()
        raise OSError(
            f"Could not load the AST checkpoint `pretrained={pretrained!r}` ({error}). {hint}"
            "download it once elsewhere with `ASTModel.from_pretrained(...).save_pretrained(DIR)` "
            "and pass `pretrained: DIR` (a local directory), or set `pretrained: null` for a "
            "randomly initialised model."
        ) from error


# The ASTBackbone arguments that are ASTConfig fields (all but `pretrained` and `pooling`).
_CONFIG_ARGUMENTS = (
    "max_length",
    "num_mel_bins",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "patch_size",
    "frequency_stride",
    "time_stride",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "hidden_act",
    "layer_norm_eps",
    "qkv_bias",
    "initializer_range",
)


class ASTBackbone(Backbone):
    """AST embedding extractor: log-mel features -> one embedding per clip.

    Args:
        pretrained: Hugging Face hub id, a local directory written by ``save_pretrained``, or
            ``None`` for a random initialisation from the ``ASTConfig`` fields below.
        max_length: Number of input frames ``T``. A pretrained checkpoint trained with another
            length gets its position embeddings adapted (:func:`adapt_position_embeddings`).
        num_mel_bins: Number of mel bins ``F``; must match a pretrained checkpoint.
        pooling: ``"cls_dist"``: mean of the CLS and distillation tokens (the paper's choice);
            ``"patch_mean"``: mean of the patch tokens.
        hidden_size: Transformer width (random init only).
        num_hidden_layers: Number of transformer layers (random init only).
        num_attention_heads: Number of attention heads (random init only).
        intermediate_size: Width of the feed-forward layers (random init only).
        patch_size: Square patch side in bins/frames (random init only).
        frequency_stride: Patch stride along frequency (random init only).
        time_stride: Patch stride along time (random init only).
        hidden_dropout_prob: Dropout after attention/feed-forward (random init only).
        attention_probs_dropout_prob: Dropout on attention weights (random init only).
        hidden_act: Activation of the feed-forward layers (random init only).
        layer_norm_eps: Epsilon of the layer norms (random init only).
        qkv_bias: Whether the query/key/value projections have a bias (random init only).
        initializer_range: Standard deviation of the random initialisation (random init only).

    Every field of ``ASTConfig`` is one of these arguments, so :meth:`checkpoint_init_args`
    can describe a pretrained model's architecture without its weights.

    Shape:
        - features: ``[B, T, F]`` normalised log-mel filterbank (``T = max_length``)
        - output: ``[B, D]`` with ``D = embedding_dim = hidden_size``
    """

    def __init__(
        self,
        pretrained: str | None = DEFAULT_AST_CHECKPOINT,
        max_length: int = 1024,
        num_mel_bins: int = 128,
        pooling: Literal["cls_dist", "patch_mean"] = "cls_dist",
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        patch_size: int = 16,
        frequency_stride: int = 10,
        time_stride: int = 10,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        qkv_bias: bool = True,
        initializer_range: float = 0.02,
    ) -> None:
        super().__init__()
        if pooling not in ("cls_dist", "patch_mean"):
            raise ValueError(
                f"Expected argument `pooling` to be 'cls_dist' or 'patch_mean' but got {pooling!r}"
            )
        self.pooling = pooling
        if pretrained is None:
            config = ASTConfig(
                max_length=max_length,
                num_mel_bins=num_mel_bins,
                hidden_size=hidden_size,
                num_hidden_layers=num_hidden_layers,
                num_attention_heads=num_attention_heads,
                intermediate_size=intermediate_size,
                patch_size=patch_size,
                frequency_stride=frequency_stride,
                time_stride=time_stride,
                hidden_dropout_prob=hidden_dropout_prob,
                attention_probs_dropout_prob=attention_probs_dropout_prob,
                hidden_act=hidden_act,
                layer_norm_eps=layer_norm_eps,
                qkv_bias=qkv_bias,
                initializer_range=initializer_range,
            )
            self.ast = ASTModel(config)
            # transformers initialises position embeddings to zero (they are always loaded from
            # a checkpoint there); from scratch that leaves the patches without position, so
            # follow the original AST: truncated normal with the config's initializer range.
            nn.init.trunc_normal_(
                self.ast.embeddings.position_embeddings, std=config.initializer_range
            )
        else:
            self.ast = _load_pretrained(pretrained)
            self._adapt_to(max_length=max_length, num_mel_bins=num_mel_bins, source=pretrained)
            # from_pretrained returns the model in eval mode, and Lightning keeps a module's
            # mode: in training mode as a model built from a config, so its dropout trains
            self.ast.train()
        self.embedding_dim: int = self.ast.config.hidden_size

    def _adapt_to(self, max_length: int, num_mel_bins: int, source: str) -> None:
        config = self.ast.config
        if num_mel_bins != config.num_mel_bins:
            raise ValueError(
                f"Expected argument `num_mel_bins` to equal the checkpoint's num_mel_bins="
                f"{config.num_mel_bins} ({source!r}) but got {num_mel_bins}; only the time axis "
                "of the position embeddings can be adapted"
            )
        if max_length == config.max_length:
            return
        embeddings = self.ast.embeddings
        # transformers' own patch-grid arithmetic (a strided convolution without padding)
        f_dim, t_old = embeddings.get_shape(config)
        config.max_length = max_length
        _, t_new = embeddings.get_shape(config)
        with torch.no_grad():
            adapted = adapt_position_embeddings(embeddings.position_embeddings, f_dim, t_old, t_new)
        embeddings.position_embeddings = nn.Parameter(adapted.contiguous())
        log.info(
            "Adapted AST position embeddings of %s from %d to %d time patches (max_length %d)",
            source,
            t_old,
            t_new,
            max_length,
        )

    def checkpoint_init_args(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture with random weights.

        ``pretrained=None`` and every ``ASTConfig`` field of the model as built (a pretrained
        model's own config, ``max_length`` after adaptation). ``AudioClassifier`` stores them in
        its checkpoints, so that loading one (whose ``state_dict`` then fills the weights)
        neither downloads nor reads the pretrained weights the training started from.
        """
        config = self.ast.config
        return {"pretrained": None, **{name: getattr(config, name) for name in _CONFIG_ARGUMENTS}}

    @property
    def input_shape(self) -> tuple[int, int]:
        """``(T, F)`` of the features the model takes: ``(max_length, num_mel_bins)``."""
        return self.ast.config.max_length, self.ast.config.num_mel_bins

    def forward(self, features: Tensor) -> Tensor:
        """Embed a batch of log-mel feature matrices.

        Shape:
            - features: ``[B, T, F]``
            - output: ``[B, D]``
        """
        expected = self.input_shape
        if features.ndim != 3 or tuple(features.shape[1:]) != expected:
            raise ValueError(
                f"Expected `features` of shape [B, {expected[0]}, {expected[1]}] (max_length, "
                f"num_mel_bins) but got {tuple(features.shape)}"
            )
        hidden = self.ast(input_values=features).last_hidden_state  # layer-normed [B, 2 + N, H]
        if self.pooling == "cls_dist":
            return (hidden[:, 0] + hidden[:, 1]) / 2
        return hidden[:, 2:].mean(dim=1)
