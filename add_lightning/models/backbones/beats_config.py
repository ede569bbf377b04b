"""The configuration dict stored in BEATs checkpoints, as a validated dataclass."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

#: The values of ``activation_fn`` (``beats_layers.ACTIVATIONS`` implements each).
ACTIVATION_NAMES = ("gelu", "gelu_accurate", "relu", "tanh", "linear")


#: The dropout probabilities of the config (each in [0, 1]; fine-tuning may override them).
DROPOUT_FIELDS = (
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "encoder_layerdrop",
    "dropout_input",
    "predictor_dropout",
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class BEATsConfig:
    """The `cfg` dict of a BEATs checkpoint, field for field.

    Defaults are those of the official `BEATsConfig` class (used for keys a checkpoint lacks),
    except `input_patch_size`, whose official placeholder -1 is replaced by the 16 every release
    uses. The released `BEATs_iter3*` checkpoints set `embed_dim=512, deep_norm=True,
    relative_position_embedding=True, num_buckets=320, max_distance=800, gru_rel_pos=True,
    layer_wise_gradient_decay_ratio=0.6, encoder_layerdrop=0.05` and all dropouts to 0.
    """

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_wise_gradient_decay_ratio: float = 1.0
    layer_norm_first: bool = False
    deep_norm: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False
    finetuned_model: bool = False
    predictor_dropout: float = 0.1
    predictor_class: int = 527

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], source: str = "cfg") -> BEATsConfig:
        """Builds a config from a checkpoint's `cfg` dict; unknown keys are logged and ignored."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            logger.warning("%s: ignoring unknown BEATs config keys %s", source, unknown)
        missing = sorted(names - set(cfg))
        if missing:
            logger.warning("%s: BEATs config keys %s absent, using defaults", source, missing)
        return cls(**{key: value for key, value in cfg.items() if key in names})

    def __post_init__(self) -> None:
        checks = [
            (self.input_patch_size > 0, "input_patch_size", "a positive integer"),
            (self.encoder_layers > 0, "encoder_layers", "a positive integer"),
            (
                self.encoder_attention_heads > 0
                and self.encoder_embed_dim % self.encoder_attention_heads == 0,
                "encoder_attention_heads",
                f"a positive divisor of encoder_embed_dim={self.encoder_embed_dim}",
            ),
            (
                self.conv_pos_groups > 0 and self.encoder_embed_dim % self.conv_pos_groups == 0,
                "conv_pos_groups",
                f"a positive divisor of encoder_embed_dim={self.encoder_embed_dim}",
            ),
            (self.conv_pos > 0, "conv_pos", "a positive integer"),
            (
                self.activation_fn in ACTIVATION_NAMES,
                "activation_fn",
                f"one of {sorted(ACTIVATION_NAMES)}",
            ),
            (
                not (self.deep_norm and self.layer_norm_first),
                "deep_norm",
                "False when layer_norm_first is True (DeepNorm is a post-LN scheme)",
            ),
        ]
        checks += [
            (0.0 <= getattr(self, name) <= 1.0, name, "a probability in [0, 1]")
            for name in DROPOUT_FIELDS
        ]
        if self.relative_position_embedding:
            checks += [
                (self.num_buckets >= 4, "num_buckets", "at least 4"),
                (
                    self.max_distance > self.num_buckets // 4,
                    "max_distance",
                    f"greater than num_buckets // 4 = {self.num_buckets // 4}",
                ),
            ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(
                    f"BEATs config `{name}` must be {expected}, got {getattr(self, name)!r}"
                )
