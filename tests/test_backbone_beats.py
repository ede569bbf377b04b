"""Tests of the native BEATs backbone against hand-computed values and a float64 re-statement."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from add_lightning.models.backbones.beats import BEATsBackbone, patch_padding_mask
from add_lightning.models.backbones.beats_config import BEATsConfig
from add_lightning.models.backbones.beats_layers import relative_position_bucket

TINY = {
    "encoder_layers": 2,
    "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 48,
    "encoder_attention_heads": 4,
    "embed_dim": 24,
    "conv_pos": 16,
    "conv_pos_groups": 4,
    "relative_position_embedding": True,
    "num_buckets": 16,
    "max_distance": 32,
    "gru_rel_pos": True,
    "deep_norm": True,
}
# Pre-LN variant: no DeepNorm, no relative bias, odd positional kernel, no post_extract_proj.
TINY_PRE_LN = {
    **TINY,
    "embed_dim": 32,
    "conv_pos": 15,
    "relative_position_embedding": False,
    "gru_rel_pos": False,
    "deep_norm": False,
    "layer_norm_first": True,
}
VARIANTS = pytest.mark.parametrize("arch", [TINY, TINY_PRE_LN], ids=["deep_norm", "pre_ln"])

# Buckets for num_buckets=16, max_distance=32, worked out by hand from the T5 rule: 8 buckets a
# direction, |r| < 4 exact, then 4 + floor(4 · ln(|r|/4) / ln 8), capped at 7; r > 0 adds 8.
# Boundaries: 4 · ln(r/4) / ln 8 reaches 1 at r = 4 · 8^(1/4) = 6.73, 2 at 11.31, 3 at 19.03.
ABS_BUCKET_16_32 = [0, 1, 2, 3, 4, 4, 4, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6] + [7] * 21


def hand_bucket(offset: int) -> int:
    return ABS_BUCKET_16_32[abs(offset)] + (8 if offset > 0 else 0)


def tiny_backbone(seed: int = 0, **overrides: object) -> BEATsBackbone:
    torch.manual_seed(seed)
    return BEATsBackbone(**{**TINY, **overrides})


def write_checkpoint(path: Path, config: BEATsConfig, state: dict) -> Path:
    torch.save({"cfg": dataclasses.asdict(config), "model": state}, path)
    return path


def test_relative_position_buckets_match_hand_table() -> None:
    offsets = torch.arange(-40, 41)
    expected = torch.tensor([hand_bucket(int(r)) for r in offsets])
    torch.testing.assert_close(relative_position_bucket(offsets, 16, 32), expected)


def test_relative_position_buckets_release_config() -> None:
    # num_buckets=320, max_distance=800 (BEATs_iter3): 80 exact, then 80 + floor(80 log10(r/80)).
    offsets = torch.tensor([0, -1, 1, -79, 79, -80, 100, -200, 400, -500, 500, 800, -5000])
    expected = torch.tensor([0, 1, 161, 79, 239, 80, 247, 111, 295, 143, 303, 319, 159])
    torch.testing.assert_close(relative_position_bucket(offsets, 320, 800), expected)


def test_patch_padding_mask_hand_case() -> None:
    # 2 time patches of 4 frames, 3 frequency patches; 10 frames, the last 2 dropped by the conv.
    frames = torch.tensor([[False] * 5 + [True] * 5, [False] * 8 + [True] * 2])
    expected = torch.tensor([[False] * 3 + [False] * 3, [False] * 6])
    torch.testing.assert_close(patch_padding_mask(frames, 2, 3, 4), expected)
    frames = torch.tensor([[False] * 4 + [True] * 6])
    torch.testing.assert_close(
        patch_padding_mask(frames, 2, 3, 4), torch.tensor([[False] * 3 + [True] * 3])
    )


@pytest.mark.parametrize("valid_frames", [16, 48, 80, 96])
def test_patch_padding_mask_equals_official_rule_for_padding_at_patch_boundaries(
    valid_frames: int,
) -> None:
    # The official rule groups the T frames T / N at a time in patch order (N patches).
    frames = torch.arange(100)[None, :] >= valid_frames  # 6 time patches of 16, 4 frames dropped
    num_patches = 6 * 8
    extra = frames.shape[1] % num_patches
    official = frames[:, : frames.shape[1] - extra].reshape(1, num_patches, -1).all(-1)
    torch.testing.assert_close(patch_padding_mask(frames, 6, 8, 16), official)


def reference_forward(state: dict, cfg: BEATsConfig, features: torch.Tensor) -> torch.Tensor:
    """BEATs forward in float64, written from the published equations in the official layout.

    Uses the official attention arithmetic (queries pre-divided by 32, row maximum subtracted,
    rescaled by 32), torch's own `_weight_norm`, and the hand bucket table above.
    """
    s = {key: value.double() for key, value in state.items()}
    p, width, heads = cfg.input_patch_size, cfg.encoder_embed_dim, cfg.encoder_attention_heads
    head_dim = width // heads

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], s[f"{name}.weight"], s[f"{name}.bias"], 1e-5)

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ s[f"{name}.weight"].T + s[f"{name}.bias"]

    x = F.conv2d(features.double().unsqueeze(1), s["patch_embedding.weight"], stride=p)
    batch = x.shape[0]
    x = norm(x.reshape(batch, cfg.embed_dim, -1).transpose(1, 2), "layer_norm")
    if cfg.embed_dim != width:
        x = linear(x, "post_extract_proj")
    length = x.shape[1]
    weight = torch._weight_norm(
        s["encoder.pos_conv.0.weight_v"], s["encoder.pos_conv.0.weight_g"], 2
    )
    conv = F.conv1d(
        x.transpose(1, 2),
        weight,
        s["encoder.pos_conv.0.bias"],
        padding=cfg.conv_pos // 2,
        groups=cfg.conv_pos_groups,
    )[..., :length]
    x = x + F.gelu(conv).transpose(1, 2)
    if not cfg.layer_norm_first:
        x = norm(x, "encoder.layer_norm")
    position_bias = None
    if cfg.relative_position_embedding:
        buckets = torch.tensor([[hand_bucket(j - i) for j in range(length)] for i in range(length)])
        table = s["encoder.layers.0.self_attn.relative_attention_bias.weight"]
        position_bias = table[buckets].permute(2, 0, 1)  # [H, N, N]
    alpha = (2 * cfg.encoder_layers) ** 0.25 if cfg.deep_norm else 1.0
    for index in range(cfg.encoder_layers):
        pre = f"encoder.layers.{index}."

        def attention(h: torch.Tensor, pre: str = pre) -> torch.Tensor:
            def split(t: torch.Tensor) -> torch.Tensor:
                return t.reshape(batch, length, heads, head_dim).transpose(1, 2)

            q = split(linear(h, pre + "self_attn.q_proj"))
            k = split(linear(h, pre + "self_attn.k_proj"))
            v = split(linear(h, pre + "self_attn.v_proj"))
            scores = (q * head_dim**-0.5 / 32) @ k.transpose(-1, -2)
            scores = (scores - scores.amax(-1, keepdim=True)) * 32
            if position_bias is not None:
                bias = position_bias
                if cfg.gru_rel_pos:
                    g = linear(q, pre + "self_attn.grep_linear").reshape(batch, heads, length, 2, 4)
                    g = torch.sigmoid(g.sum(-1))
                    gate_a, gate_b = g[..., :1], g[..., 1:]
                    bias = (gate_a * (gate_b * s[pre + "self_attn.grep_a"] - 1) + 2) * bias
                scores = scores + bias
            out = torch.softmax(scores, -1) @ v
            return linear(
                out.transpose(1, 2).reshape(batch, length, width), pre + "self_attn.out_proj"
            )

        def feed_forward(h: torch.Tensor, pre: str = pre) -> torch.Tensor:
            return linear(F.gelu(linear(h, pre + "fc1")), pre + "fc2")

        if cfg.layer_norm_first:
            x = x + attention(norm(x, pre + "self_attn_layer_norm"))
            x = x + feed_forward(norm(x, pre + "final_layer_norm"))
        else:
            x = norm(x * alpha + attention(x), pre + "self_attn_layer_norm")
            x = norm(x * alpha + feed_forward(x), pre + "final_layer_norm")
    if cfg.layer_norm_first:
        x = norm(x, "encoder.layer_norm")
    return x.mean(dim=1)


@VARIANTS
def test_matches_float64_reference(arch: dict) -> None:
    torch.manual_seed(0)
    model = BEATsBackbone(**arch).double().eval()
    # Non-trivial gates and norms: perturb every parameter away from its initial value.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    features = torch.randn(2, 64, 128, dtype=torch.float64)
    expected = reference_forward(model.state_dict(), model.config, features)
    torch.testing.assert_close(model(features), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("pooling", ["patch_mean", "pre_head"])
@pytest.mark.parametrize(("frames", "bins"), [(64, 128), (70, 128), (32, 40)], ids=str)
def test_output_shape(pooling: str, frames: int, bins: int) -> None:
    generator = torch.Generator().manual_seed(0)
    model = tiny_backbone(pooling=pooling)
    output = model(torch.randn(3, frames, bins, generator=generator))
    assert output.shape == (3, model.embedding_dim)
    assert model.embedding_dim == TINY["encoder_embed_dim"]
    assert torch.isfinite(output).all()


def test_eval_mode_is_deterministic() -> None:
    generator = torch.Generator().manual_seed(0)
    model = tiny_backbone(dropout=0.3, attention_dropout=0.3, encoder_layerdrop=0.5).eval()
    features = torch.randn(2, 64, 128, generator=generator)
    torch.testing.assert_close(model(features), model(features), rtol=0, atol=0)


def test_pre_head_pooling_applies_predictor_dropout_in_training_only() -> None:
    generator = torch.Generator().manual_seed(0)
    kwargs = {"dropout": 0.0, "attention_dropout": 0.0, "predictor_dropout": 0.5}
    patch_mean = tiny_backbone(**kwargs)
    pre_head = tiny_backbone(pooling="pre_head", **kwargs)
    features = torch.randn(2, 64, 128, generator=generator)
    torch.testing.assert_close(pre_head.eval()(features), patch_mean.eval()(features))
    assert not torch.allclose(pre_head.train()(features), patch_mean.train()(features))


@VARIANTS
def test_padded_clip_gets_its_unpadded_embedding(arch: dict) -> None:
    torch.manual_seed(0)
    model = BEATsBackbone(**arch).eval()
    clip = torch.randn(1, 48, 128)
    other = torch.randn(1, 96, 128)
    garbage = 100 * torch.randn(1, 48, 128)
    batch = torch.cat([other, torch.cat([clip, garbage], dim=1)])
    padding_mask = torch.zeros(2, 96, dtype=torch.bool)
    padding_mask[1, 48:] = True
    torch.testing.assert_close(model(batch, padding_mask)[1], model(clip)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(batch, padding_mask)[0], model(other)[0], rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter() -> None:
    model = tiny_backbone(layer_wise_gradient_decay_ratio=0.6, conv_bias=True).train()
    torch.manual_seed(1)
    features = torch.randn(2, 64, 128)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[0, 32:] = True
    # A random projection: the sum of a LayerNorm output has zero gradient by construction.
    (model(features, mask) @ torch.randn(model.embedding_dim)).sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_layer_wise_gradient_decay_scales_gradients_by_depth() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 64, 128, generator=generator)
    projection = torch.randn(TINY["encoder_embed_dim"], generator=generator)
    grads = {}
    for ratio in (1.0, 0.5):
        model = tiny_backbone(layer_wise_gradient_decay_ratio=ratio, dropout=0.0)
        (model(features) @ projection).sum().backward()
        grads[ratio] = {name: p.grad for name, p in model.named_parameters()}
    # Every layer multiplies the gradient flowing below it: 2 layers below the patch embedding.
    torch.testing.assert_close(
        grads[0.5]["patch_embedding.weight"], 0.25 * grads[1.0]["patch_embedding.weight"]
    )
    for name in ("encoder.layers.0.fc1.weight", "encoder.layers.1.fc1.weight"):
        scale = 0.5 if ".0." in name else 1.0
        torch.testing.assert_close(grads[0.5][name], scale * grads[1.0][name])


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    model = tiny_backbone(seed=3).eval()
    path = write_checkpoint(tmp_path / "beats.pt", model.config, model.state_dict())
    loaded = BEATsBackbone(checkpoint=str(path)).eval()
    assert loaded.config == model.config
    features = torch.randn(2, 64, 128, generator=generator)
    torch.testing.assert_close(loaded(features), model(features), rtol=0, atol=0)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_finetuned_checkpoint_ignores_predictor_and_label_dict(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    model = tiny_backbone(seed=4).eval()
    config = dataclasses.replace(model.config, finetuned_model=True, predictor_class=5)
    state = {
        **model.state_dict(),
        "predictor.weight": torch.randn(5, 32, generator=generator),
        "predictor.bias": torch.randn(5, generator=generator),
    }
    path = tmp_path / "finetuned.pt"
    cfg = {**dataclasses.asdict(config), "some_future_key": 1}
    torch.save({"cfg": cfg, "model": state, "label_dict": {"/m/09x0r": 0}}, path)
    loaded = BEATsBackbone(checkpoint=str(path)).eval()
    features = torch.randn(1, 64, 128, generator=generator)
    torch.testing.assert_close(loaded(features), model(features), rtol=0, atol=0)


def test_checkpoint_with_relative_table_in_first_layer_only(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    model = tiny_backbone(seed=5).eval()
    state = model.state_dict()
    del state["encoder.layers.1.self_attn.relative_attention_bias.weight"]
    path = write_checkpoint(tmp_path / "first_only.pt", model.config, state)
    loaded = BEATsBackbone(checkpoint=str(path)).eval()
    features = torch.randn(1, 64, 128, generator=generator)
    torch.testing.assert_close(loaded(features), model(features), rtol=0, atol=0)


def test_checkpoint_with_differing_relative_tables_fails(tmp_path: Path) -> None:
    model = tiny_backbone()
    state = model.state_dict()
    key = "encoder.layers.1.self_attn.relative_attention_bias.weight"
    state[key] = state[key] + 1
    path = write_checkpoint(tmp_path / "untied.pt", model.config, state)
    with pytest.raises(ValueError, match=r"layers\.1\.self_attn\.relative_attention_bias"):
        BEATsBackbone(checkpoint=str(path))


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    model = tiny_backbone()
    state = model.state_dict()
    del state["encoder.layers.1.fc2.bias"]
    state["encoder.layers.1.extra.weight"] = torch.zeros(1)
    path = write_checkpoint(tmp_path / "bad.pt", model.config, state)
    with pytest.raises(ValueError) as error:
        BEATsBackbone(checkpoint=str(path))
    message = str(error.value)
    assert "encoder.layers.1.fc2.bias" in message
    assert "encoder.layers.1.extra.weight" in message
    assert str(path) in message


def test_predictor_keys_without_finetuned_cfg_are_ignored_too(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    model = tiny_backbone().eval()
    state = {**model.state_dict(), "predictor.weight": torch.zeros(3, 32)}
    path = write_checkpoint(tmp_path / "head.pt", model.config, state)
    features = torch.randn(1, 64, 128, generator=generator)
    torch.testing.assert_close(
        BEATsBackbone(checkpoint=str(path)).eval()(features), model(features)
    )


def test_wrong_shapes_are_named(tmp_path: Path) -> None:
    model = tiny_backbone()
    state = model.state_dict()
    state["encoder.layers.0.fc1.weight"] = torch.zeros(7, 32)
    path = write_checkpoint(tmp_path / "shape.pt", model.config, state)
    with pytest.raises(ValueError, match=r"encoder\.layers\.0\.fc1\.weight: expected \(48, 32\)"):
        BEATsBackbone(checkpoint=str(path))


def test_architecture_override_contradicting_checkpoint_fails(tmp_path: Path) -> None:
    model = tiny_backbone()
    path = write_checkpoint(tmp_path / "beats.pt", model.config, model.state_dict())
    with pytest.raises(ValueError, match=r"`encoder_layers`=3 contradicts `encoder_layers`=2"):
        BEATsBackbone(checkpoint=str(path), encoder_layers=3)
    # Agreeing architecture values and regularisation overrides are accepted.
    loaded = BEATsBackbone(
        checkpoint=str(path), encoder_layers=2, dropout=0.0, encoder_layerdrop=0.1
    )
    assert loaded.config.dropout == 0.0
    assert loaded.config.encoder_layerdrop == 0.1


def test_checkpoint_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.pt"):
        BEATsBackbone(checkpoint=str(tmp_path / "absent.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"must be a dict with keys 'cfg' and 'model', got list"):
        BEATsBackbone(checkpoint=str(tmp_path / "list.pt"))
    torch.save({"model": {}}, tmp_path / "no_cfg.pt")
    with pytest.raises(ValueError, match=r"got \['model'\]"):
        BEATsBackbone(checkpoint=str(tmp_path / "no_cfg.pt"))
    torch.save({"cfg": [1], "model": {}}, tmp_path / "cfg_list.pt")
    with pytest.raises(ValueError, match="expected 'cfg' and 'model' to be dicts, got list"):
        BEATsBackbone(checkpoint=str(tmp_path / "cfg_list.pt"))
    torch.save(
        {"cfg": dataclasses.asdict(BEATsConfig()), "model": {}, "x": Path("/")}, tmp_path / "obj.pt"
    )
    with pytest.raises(ValueError, match="objects other than tensors"):
        BEATsBackbone(checkpoint=str(tmp_path / "obj.pt"))


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"encoder_attention_heads": 5}, "encoder_attention_heads"),
        ({"conv_pos_groups": 5}, "conv_pos_groups"),
        ({"activation_fn": "glu"}, "activation_fn"),
        ({"layer_norm_first": True}, "deep_norm"),
        ({"num_buckets": 2}, "num_buckets"),
        ({"max_distance": 4}, "max_distance"),
        ({"input_patch_size": 0}, "input_patch_size"),
        ({"encoder_layerdrop": 1.5}, "encoder_layerdrop"),
        ({"dropout": -0.1}, "dropout"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_invalid_config_is_named(overrides: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        tiny_backbone(**overrides)


def test_every_accepted_activation_is_implemented() -> None:
    # the config validates names without importing the layers: the two lists must agree
    from add_lightning.models.backbones.beats_config import ACTIVATION_NAMES
    from add_lightning.models.backbones.beats_layers import ACTIVATIONS

    assert sorted(ACTIVATION_NAMES) == sorted(ACTIVATIONS)


def test_invalid_forward_arguments_are_named() -> None:
    generator = torch.Generator().manual_seed(0)
    model = tiny_backbone()
    with pytest.raises(ValueError, match="`pooling`"):
        BEATsBackbone(**TINY, pooling="cls")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`features`.*\(2, 8, 128\)"):
        model(torch.randn(2, 8, 128, generator=generator))
    with pytest.raises(ValueError, match=r"`features`.*\(64, 128\)"):
        model(torch.randn(64, 128, generator=generator))
    with pytest.raises(ValueError, match=r"`padding_mask` of shape \(2, 64\), got \(2, 63\)"):
        model(torch.randn(2, 64, 128, generator=generator), torch.zeros(2, 63, dtype=torch.bool))
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[1] = True
    with pytest.raises(ValueError, match=r"no valid frame .* clips \[1\]"):
        model(torch.randn(2, 64, 128, generator=generator), mask)


def test_config_from_dict_ignores_unknown_and_defaults_missing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = BEATsConfig.from_dict({"encoder_layers": 3, "future_option": True}, source="ckpt.pt")
    assert config.encoder_layers == 3
    assert config.dropout == 0.1  # the official BEATsConfig default
    assert "future_option" in caplog.text
    assert math.isclose(config.layer_wise_gradient_decay_ratio, 1.0)


def test_builds_from_yaml_like_lightning_cli(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    from jsonargparse import ArgumentParser

    model = tiny_backbone(seed=6).eval()
    path = write_checkpoint(tmp_path / "beats.pt", model.config, model.state_dict())
    parser = ArgumentParser()
    parser.add_argument("--backbone", type=torch.nn.Module)
    config = parser.parse_string(
        "backbone:\n"
        "  class_path: add_lightning.models.backbones.beats.BEATsBackbone\n"
        f"  init_args: {{checkpoint: {path}, pooling: pre_head, encoder_layerdrop: 0.0}}\n"
    )
    backbone = parser.instantiate(config).backbone.eval()
    assert isinstance(backbone, BEATsBackbone)
    assert backbone.pooling == "pre_head"
    features = torch.randn(1, 64, 128, generator=generator)
    torch.testing.assert_close(backbone(features), model(features), rtol=0, atol=0)
