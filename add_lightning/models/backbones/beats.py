"""BEATs backbone: patch embedding + Transformer encoder, loading the official checkpoints.

Chen et al., "BEATs: Audio Pre-Training with Acoustic Tokenizers" (2022). The official files
(`BEATs_iter3_plus_AS2M.pt` and its siblings, released with microsoft/unilm) are `torch.save`d
dicts `{"cfg": dict, "model": state_dict}`; fine-tuned ones add the AudioSet head
(`predictor.weight`, `predictor.bias`) and a `label_dict`. The backbone takes the normalised
fbank frames the data package computes (waveform × 2^15, Kaldi fbank with the povey window,
(x − 15.41663) / (2 × 6.55582)); it does not compute features itself.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from add_lightning.models.backbones.base import Backbone
from add_lightning.models.backbones.beats_config import DROPOUT_FIELDS, BEATsConfig
from add_lightning.models.backbones.beats_layers import BEATsEncoder

logger = logging.getLogger(__name__)

Pooling = Literal["patch_mean", "pre_head"]

# Fields that only change regularisation: a checkpoint's value may be overridden for fine-tuning.
REGULARISATION_FIELDS = (*DROPOUT_FIELDS, "layer_wise_gradient_decay_ratio")
PREDICTOR_PREFIX = "predictor."


def read_beats_checkpoint(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """Reads an official BEATs checkpoint file without unpickling arbitrary objects.

    Args:
        path: a file saved as `{"cfg": dict, "model": state_dict, ...}`.

    Returns:
        The `cfg` dict and the `model` state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"BEATs checkpoint `{path}` does not exist; download BEATs_iter3_plus_AS2M.pt from "
            "the official release (github.com/microsoft/unilm/tree/master/beats) and pass its path"
        )
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"BEATs checkpoint `{path}` holds objects other than tensors and plain containers, so "
            "it is not loaded (official files load with weights_only=True); if you trust it, "
            "re-save it as {'cfg': dict, 'model': state_dict}"
        ) from error
    if not isinstance(content, Mapping) or not {"cfg", "model"} <= set(content):
        found = sorted(content) if isinstance(content, Mapping) else type(content).__name__
        raise ValueError(
            f"BEATs checkpoint `{path}` must be a dict with keys 'cfg' and 'model', got {found}"
        )
    cfg, state = content["cfg"], content["model"]
    if not isinstance(cfg, Mapping) or not isinstance(state, Mapping):
        raise ValueError(
            f"BEATs checkpoint `{path}`: expected 'cfg' and 'model' to be dicts, got "
            f"{type(cfg).__name__} and {type(state).__name__}"
        )
    return dict(cfg), dict(state)


def patch_padding_mask(
    padding_mask: Tensor, time_patches: int, freq_patches: int, patch: int
) -> Tensor:
    """Marks a patch as padding when every frame it covers is padding.

    Patches are numbered time-major (patch n covers frames `patch · (n // freq_patches)` to
    `patch · (n // freq_patches + 1) − 1`); trailing frames the convolution drops are ignored.
    For padding that starts at a multiple of `patch` frames this equals the official rule (frames
    grouped T / N at a time in patch order); otherwise a partly valid patch stays valid here.

    Shape:
        padding_mask: [B, T] bool (True = padding). Returns [B, time_patches · freq_patches].
    """
    frames = padding_mask[:, : time_patches * patch].reshape(-1, time_patches, patch)
    return frames.all(-1).repeat_interleave(freq_patches, dim=1)


class BEATsBackbone(Backbone):
    """BEATs encoder returning one embedding per clip.

    Built from a checkpoint (its `cfg` drives the architecture, every weight key is mapped) or
    randomly initialised from `BEATsConfig` defaults plus the arguments given. Architecture
    arguments given together with a checkpoint must agree with its `cfg`; regularisation
    arguments (dropouts, layer drop, layer-wise gradient decay) override it.

    Args:
        checkpoint: path to an official BEATs `.pt` file, or None for random initialisation.
        pooling: `"patch_mean"`, the mean of the final patch tokens over non-padding patches; or
            `"pre_head"`, the input of the fine-tuned AudioSet predictor: the same mean taken
            after `predictor_dropout` is applied to each token (the official head averages its
            per-token logits, which equals applying it to this mean). Both agree in eval mode.
        Remaining arguments: the `cfg` fields of the same name (see `BEATsConfig`); None keeps
            the checkpoint's value, or the default for random initialisation.

    Shape:
        forward: features [B, T, F] (F = 128 fbank bins), padding_mask [B, T] -> [B, D].

    Attributes:
        accepts_padding_mask: True: ``AudioClassifier`` passes the batch's padding mask.
    """

    accepts_padding_mask = True

    def __init__(
        self,
        checkpoint: str | None = None,
        pooling: Pooling = "patch_mean",
        input_patch_size: int | None = None,
        embed_dim: int | None = None,
        conv_bias: bool | None = None,
        encoder_layers: int | None = None,
        encoder_embed_dim: int | None = None,
        encoder_ffn_embed_dim: int | None = None,
        encoder_attention_heads: int | None = None,
        activation_fn: str | None = None,
        layer_norm_first: bool | None = None,
        deep_norm: bool | None = None,
        conv_pos: int | None = None,
        conv_pos_groups: int | None = None,
        relative_position_embedding: bool | None = None,
        num_buckets: int | None = None,
        max_distance: int | None = None,
        gru_rel_pos: bool | None = None,
        dropout: float | None = None,
        attention_dropout: float | None = None,
        activation_dropout: float | None = None,
        encoder_layerdrop: float | None = None,
        dropout_input: float | None = None,
        predictor_dropout: float | None = None,
        layer_wise_gradient_decay_ratio: float | None = None,
    ) -> None:
        super().__init__()
        if pooling not in ("patch_mean", "pre_head"):
            raise ValueError(
                f"Expected argument `pooling` to be 'patch_mean' or 'pre_head', got {pooling!r}"
            )
        # Every argument after `pooling` is the BEATsConfig field of the same name.
        overrides = {
            key: value
            for key, value in locals().items()
            if key not in ("self", "checkpoint", "pooling", "__class__") and value is not None
        }
        state: dict[str, Tensor] | None = None
        if checkpoint is None:
            config = BEATsConfig(**overrides)
        else:
            cfg, state = read_beats_checkpoint(checkpoint)
            config = BEATsConfig.from_dict(cfg, source=str(checkpoint))
            for key, value in overrides.items():
                current = getattr(config, key)
                if key not in REGULARISATION_FIELDS and value != current:
                    raise ValueError(
                        f"Argument `{key}`={value!r} contradicts `{key}`={current!r} in the cfg "
                        f"of checkpoint `{checkpoint}`; leave it unset to use the checkpoint"
                    )
            config = dataclasses.replace(config, **overrides)
        self.config = config
        self.pooling = pooling
        self.embedding_dim = config.encoder_embed_dim

        self.patch_embedding = nn.Conv2d(
            1,
            config.embed_dim,
            kernel_size=config.input_patch_size,
            stride=config.input_patch_size,
            bias=config.conv_bias,
        )
        self.layer_norm = nn.LayerNorm(config.embed_dim)
        self.post_extract_proj = (
            nn.Linear(config.embed_dim, config.encoder_embed_dim)
            if config.embed_dim != config.encoder_embed_dim
            else None
        )
        self.dropout_input = nn.Dropout(config.dropout_input)
        self.encoder = BEATsEncoder(config)
        self.predictor_dropout = nn.Dropout(config.predictor_dropout)
        if state is not None:
            self.load_beats_state_dict(state, source=str(checkpoint))

    def checkpoint_init_args(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture with random weights.

        ``checkpoint=None`` and every ``BEATsConfig`` field that is an argument, as built (the
        checkpoint file's ``cfg`` with the overrides applied). ``AudioClassifier`` stores them in
        its checkpoints, so that loading one (whose ``state_dict`` then fills the weights) does
        not need the BEATs file the training started from.
        """
        arguments = inspect.signature(type(self).__init__).parameters
        fields = [field.name for field in dataclasses.fields(self.config)]
        values = {name: getattr(self.config, name) for name in fields if name in arguments}
        return {"checkpoint": None, **values}

    def load_beats_state_dict(
        self, state: Mapping[str, Tensor], source: str = "state dict"
    ) -> None:
        """Loads an official BEATs `model` state dict, every key accounted for.

        The `predictor.*` head of fine-tuned checkpoints is dropped (logged): this backbone ends
        at the embedding. The relative position table is shared by all layers; keys of layers
        after the first may be absent (filled from layer 0) but, if present, must equal it.
        """
        state = dict(state)
        head = sorted(key for key in state if key.startswith(PREDICTOR_PREFIX))
        if head:
            logger.info("%s: ignoring the fine-tuned predictor head %s", source, head)
            for key in head:
                del state[key]
        expected = self.state_dict()
        shared_key = "encoder.layers.{}.self_attn.relative_attention_bias.weight"
        if self.config.relative_position_embedding and shared_key.format(0) in state:
            table = state[shared_key.format(0)]
            for index in range(1, self.config.encoder_layers):
                copy = state.setdefault(shared_key.format(index), table)
                if copy.shape != table.shape or not torch.equal(copy, table):
                    raise ValueError(
                        f"{source}: `{shared_key.format(index)}` differs from layer 0's table, "
                        "but BEATs shares one relative position table across all layers"
                    )
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{source} does not match the BEATs architecture of its cfg: missing keys "
                f"{_summarise(missing)}, unexpected keys {_summarise(unexpected)}"
            )
        wrong_shape = [
            f"{key}: expected {tuple(expected[key].shape)}, got {tuple(value.shape)}"
            for key, value in state.items()
            if value.shape != expected[key].shape
        ]
        if wrong_shape:
            raise ValueError(f"{source}: tensor shapes differ: {_summarise(wrong_shape)}")
        self.load_state_dict(state, strict=True)

    def release_dropped_gradients(self) -> None:
        """See :meth:`BEATsEncoder.release_dropped_gradients` (layer drop under DDP)."""
        self.encoder.release_dropped_gradients()

    def forward(self, features: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Embeds a batch of normalised fbank frames.

        Args:
            features: normalised fbank, [B, T, F]; T and F at least `input_patch_size`.
            padding_mask: True at padding frames, [B, T]; every clip needs a valid frame.
                A clip then gets the embedding it gets alone when its valid frames form a
                prefix whose length is a multiple of `input_patch_size`.

        Shape:
            features: [B, T, F]; padding_mask: [B, T]. Returns [B, D].
        """
        patch = self.config.input_patch_size
        if features.ndim != 3 or features.shape[1] < patch or features.shape[2] < patch:
            raise ValueError(
                f"Expected argument `features` of shape [B, T, F] with T, F >= {patch}, "
                f"got {tuple(features.shape)}"
            )
        x = self.patch_embedding(features.unsqueeze(1))
        time_patches, freq_patches = x.shape[2:]
        x = self.layer_norm(x.flatten(2).transpose(1, 2))
        mask = None
        if padding_mask is not None:
            if padding_mask.shape != features.shape[:2]:
                raise ValueError(
                    f"Expected argument `padding_mask` of shape {tuple(features.shape[:2])}, "
                    f"got {tuple(padding_mask.shape)}"
                )
            mask = patch_padding_mask(padding_mask.bool(), time_patches, freq_patches, patch)
            if not torch.compiler.is_exporting() and mask.all(-1).any():
                clips = mask.all(-1).nonzero().flatten().tolist()
                raise ValueError(
                    f"Argument `padding_mask` leaves no valid frame in the first "
                    f"{time_patches * patch} frames of clips {clips}"
                )
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        x = self.encoder(self.dropout_input(x), padding_mask=mask)
        if self.pooling == "pre_head":
            x = self.predictor_dropout(x)
        if mask is None:
            return x.mean(dim=1)
        weights = (~mask).unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(dim=1) / weights.sum(dim=1)


def _summarise(items: list[str], limit: int = 20) -> str:
    if len(items) <= limit:
        return str(items)
    return f"{items[:limit]} and {len(items) - limit} more"
