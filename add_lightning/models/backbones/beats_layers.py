"""Building blocks of the BEATs Transformer encoder.

BEATs (Chen et al., "BEATs: Audio Pre-Training with Acoustic Tokenizers", 2022) encodes 16×16
fbank patches with a post-LN Transformer whose layers add a convolutional positional embedding
at the input and a bucketed relative position bias (T5 style, optionally gated as in WavLM) to
every attention map; the released checkpoints use DeepNorm residual scaling. Module and parameter
names follow the official release so its state dicts load key for key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from add_lightning.tensor_utils import scale_gradient

if TYPE_CHECKING:
    from add_lightning.models.backbones.beats_config import BEATsConfig


def _at_least_float32(x: Tensor) -> Tensor:
    # The official code evaluates GELU in float32 so that half-precision runs agree with it.
    return x.to(torch.promote_types(x.dtype, torch.float32))


#: ``BEATsConfig.activation_fn`` -> the function (one per name of ``ACTIVATION_NAMES``).
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": lambda x: F.gelu(_at_least_float32(x)).type_as(x),
    "gelu_accurate": lambda x: F.gelu(_at_least_float32(x), approximate="tanh").type_as(x),
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


def relative_position_bucket(
    relative_position: Tensor, num_buckets: int, max_distance: int
) -> Tensor:
    """Maps signed offsets (key − query) to bidirectional T5 buckets.

    Half of the buckets hold positive offsets (shifted by `num_buckets // 2`), the other half
    zero and negative ones. Within a half, `|offset| < num_buckets // 4` gets its own bucket;
    larger ones share log-spaced buckets up to `max_distance`, beyond which all fall in the last.

    Shape:
        relative_position: any shape, int64. Returns the same shape, int64.
    """
    half = num_buckets // 2
    max_exact = half // 2
    buckets = (relative_position > 0).long() * half
    distance = relative_position.abs()
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(
        max_distance / max_exact
    )
    large = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d with weight normalisation over the kernel axis (`weight_norm(dim=2)`).

    weight = weight_g · weight_v / ‖weight_v‖, the norm taken over output and input channels
    separately for each kernel tap, so `weight_g` has shape [1, 1, kernel_size].

    Shape:
        forward: [B, C, N] -> [B, C, N + 1 - kernel_size % 2] (zero padding kernel_size // 2).
    """

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.groups = groups
        # Initialised as in the official code: N(0, sqrt(4 / (kernel_size · channels))), g = ‖v‖.
        std = math.sqrt(4.0 / (kernel_size * channels))
        weight_v = torch.randn(channels, channels // groups, kernel_size) * std
        self.weight_g = nn.Parameter(weight_v.norm(dim=(0, 1), keepdim=True))
        self.weight_v = nn.Parameter(weight_v)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        return F.conv1d(x, weight, self.bias, padding=self.kernel_size // 2, groups=self.groups)


class SamePad(nn.Module):
    """Drops the extra last step a symmetric even-kernel convolution produces.

    Shape:
        forward: [B, C, N + 1] -> [B, C, N] for an even kernel, unchanged for an odd one.
    """

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        return x[..., : x.shape[-1] - self.remove]


class BEATsSelfAttention(nn.Module):
    """Multi-head self-attention with an additive (optionally gated) relative position bias.

    Mathematically softmax(q kᵀ / sqrt(d_head) + r) v. With `gru_rel_pos`, the bias r of head h
    at query i is scaled by a gate computed from the unscaled query q_i (WavLM):
    a, b = sigmoid(grep_linear(q_i) summed in two groups of 4); r ← (a (b · grep_a_h − 1) + 2) r.
    The official code subtracts each row's maximum and rescales by 32 before the bias is added, a
    float16 safeguard that leaves the softmax unchanged; this module relies on PyTorch's
    scaled_dot_product_attention instead.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float,
        relative_attention_bias: nn.Embedding | None,
        gru_rel_pos: bool,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        if relative_attention_bias is not None:
            # Shared between layers by assignment, so each layer's state dict names it.
            self.relative_attention_bias = relative_attention_bias
        self.gru_rel_pos = gru_rel_pos
        if gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, num_heads, 1, 1))

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, position_bias: Tensor | None = None
    ) -> Tensor:
        """Attends every token to every non-padding token.

        Shape:
            x: [B, N, D]; padding_mask: [B, N] bool, True = padding; position_bias: [H, N, N].
            Returns [B, N, D].
        """
        batch, length, width = x.shape

        def heads(projection: nn.Linear) -> Tensor:
            return projection(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj), heads(self.k_proj), heads(self.v_proj)
        bias: Tensor | None = None
        if position_bias is not None:
            bias = position_bias.unsqueeze(0).to(q.dtype)
            if self.gru_rel_pos:
                gates = self.grep_linear(q).view(batch, self.num_heads, length, 2, 4).sum(-1)
                gate_a, gate_b = torch.sigmoid(gates).chunk(2, dim=-1)
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
        if padding_mask is not None:
            padding_bias = q.new_zeros(batch, 1, 1, length).masked_fill(
                padding_mask[:, None, None, :], float("-inf")
            )
            bias = padding_bias if bias is None else bias + padding_bias
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class BEATsEncoderLayer(nn.Module):
    """One Transformer layer: pre-LN, or post-LN with DeepNorm residual scaling α = (2L)^(1/4).

    Shape:
        forward: x [B, N, D], padding_mask [B, N], position_bias [H, N, N] -> [B, N, D].
    """

    def __init__(self, config: BEATsConfig, relative_attention_bias: nn.Embedding | None) -> None:
        super().__init__()
        width = config.encoder_embed_dim
        self.self_attn = BEATsSelfAttention(
            width,
            config.encoder_attention_heads,
            config.attention_dropout,
            relative_attention_bias,
            config.gru_rel_pos,
        )
        self.self_attn_layer_norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, width)
        self.final_layer_norm = nn.LayerNorm(width)
        self.activation = ACTIVATIONS[config.activation_fn]
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.layer_norm_first = config.layer_norm_first
        self.residual_scale = (2.0 * config.encoder_layers) ** 0.25 if config.deep_norm else 1.0

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.activation_dropout(self.activation(self.fc1(x)))))

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, position_bias: Tensor | None = None
    ) -> Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(
                self.self_attn(self.self_attn_layer_norm(x), padding_mask, position_bias)
            )
            return x + self._feed_forward(self.final_layer_norm(x))
        x = x * self.residual_scale + self.dropout(self.self_attn(x, padding_mask, position_bias))
        x = self.self_attn_layer_norm(x)
        return self.final_layer_norm(x * self.residual_scale + self._feed_forward(x))


class BEATsEncoder(nn.Module):
    """Convolutional positional embedding followed by the stack of Transformer layers.

    Layer drop (``encoder_layerdrop`` > 0, training only): each layer is skipped with that
    probability, drawn from the global torch RNG as one draw per layer and forward pass (so
    seeding and checkpointed RNG states reproduce it). Under DDP (an initialised process group
    of more than one process) rank 0's draws are broadcast, so every rank skips the same layers,
    and a skipped layer's parameters enter the output times zero: every parameter gets a
    (zero) gradient, which DDP with ``find_unused_parameters=False`` requires. Call
    :meth:`release_dropped_gradients` after the backward pass and before the optimizer step
    (``AudioClassifier`` does, in ``on_before_optimizer_step``) to turn those zero gradients
    back into no gradient, so the optimizer leaves skipped layers untouched, exactly as on one
    device (Adam with a zero gradient would still move them by its momentum).

    Shape:
        forward: x [B, N, D], padding_mask [B, N] bool (True = padding) -> [B, N, D].
    """

    def __init__(self, config: BEATsConfig) -> None:
        super().__init__()
        width = config.encoder_embed_dim
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(width, config.conv_pos, config.conv_pos_groups),
            SamePad(config.conv_pos),
            nn.GELU(),
        )
        shared_bias = (
            nn.Embedding(config.num_buckets, config.encoder_attention_heads)
            if config.relative_position_embedding
            else None
        )
        self.layers = nn.ModuleList(
            BEATsEncoderLayer(config, shared_bias) for _ in range(config.encoder_layers)
        )
        self.layer_norm = nn.LayerNorm(width)
        self.config = config
        self._reset_parameters()
        # Layers run / skipped with a zero contribution since `release_dropped_gradients`.
        self._ran_layers: set[int] = set()
        self._zeroed_layers: set[int] = set()
        #: The layers skipped in the latest training forward pass (for inspection).
        self.dropped_layers: list[int] = []

    def _draw_dropped_layers(self, device: torch.device) -> list[int]:
        """The layers to skip in this training pass: the same on every rank under DDP."""
        draws = torch.rand(len(self.layers))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            draws = draws.to(device)
            dist.broadcast(draws, src=0)
        return (draws < self.config.encoder_layerdrop).nonzero().flatten().tolist()

    def release_dropped_gradients(self) -> None:
        """Sets to None the zero gradients that layer drop under DDP gave to skipped layers.

        Only parameters of layers that were skipped (with a zero contribution) in every forward
        pass since the previous call are cleared, so gradient accumulation over several passes
        keeps the gradients of layers that ran in any of them.
        """
        keep = {id(p) for index in self._ran_layers for p in self.layers[index].parameters()}
        if self.config.relative_position_embedding:  # the shared table feeds every pass
            table = self.layers[0].self_attn.relative_attention_bias
            keep.update(id(p) for p in table.parameters())
        for index in self._zeroed_layers - self._ran_layers:
            for parameter in self.layers[index].parameters():
                if id(parameter) not in keep:
                    parameter.grad = None
        self._ran_layers.clear()
        self._zeroed_layers.clear()

    def _reset_parameters(self) -> None:
        # BERT initialisation of the official code, then DeepNorm's scaled Xavier init.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if self.config.deep_norm:
            beta = (8.0 * self.config.encoder_layers) ** -0.25
            for layer in self.layers:
                attention = layer.self_attn
                for linear, gain in [
                    (attention.k_proj, 1.0),
                    (attention.v_proj, beta),
                    (attention.q_proj, 1.0),
                    (attention.out_proj, beta),
                    (layer.fc1, beta),
                    (layer.fc2, beta),
                ]:
                    nn.init.xavier_normal_(linear.weight, gain=gain)

    def position_bias(self, length: int, device: torch.device) -> Tensor | None:
        """Relative position bias of the first layer's (shared) table, or None.

        Shape:
            Returns [H, N, N] with N = `length`.
        """
        if not self.config.relative_position_embedding:
            return None
        positions = torch.arange(length, device=device)
        buckets = relative_position_bucket(
            positions[None, :] - positions[:, None],
            self.config.num_buckets,
            self.config.max_distance,
        )
        return self.layers[0].self_attn.relative_attention_bias(buckets).permute(2, 0, 1)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.config.layer_norm_first:
            x = self.layer_norm(x)
        x = F.dropout(x, p=self.config.dropout, training=self.training)
        position_bias = self.position_bias(x.shape[1], x.device)
        decay = self.config.layer_wise_gradient_decay_ratio
        dropped: list[int] = []
        if self.training and self.config.encoder_layerdrop > 0:
            dropped = self.dropped_layers = self._draw_dropped_layers(x.device)
        distributed = bool(dropped) and dist.is_available() and dist.is_initialized()
        for index, layer in enumerate(self.layers):
            if decay != 1.0:
                x = scale_gradient(x, decay)
            if index in dropped:
                trainable = [p.view(-1)[:1] for p in layer.parameters() if p.requires_grad]
                if distributed and trainable:  # DDP needs a gradient for every parameter
                    x = x + 0.0 * torch.cat(trainable).sum()
                    self._zeroed_layers.add(index)
                continue
            if self.training:
                self._ran_layers.add(index)
            x = layer(x, padding_mask, position_bias)
        if self.config.layer_norm_first:
            x = self.layer_norm(x)
        return x
