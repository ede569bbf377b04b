"""ASTBackbone: pooling against transformers, position-embedding adaptation, loading errors."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch
from transformers import ASTConfig, ASTModel

from add_lightning.models.backbones.ast import ASTBackbone, adapt_position_embeddings

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "num_mel_bins": 128,
}
# patch 16, stride 10: 12 frequency patches for 128 bins; 12 time patches for 128 frames


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> tuple[str, ASTModel]:
    """A tiny AST (max_length 128) written by save_pretrained, with non-trivial weights."""
    torch.manual_seed(0)
    model = ASTModel(ASTConfig(max_length=128, **TINY))
    with torch.no_grad():
        model.embeddings.position_embeddings.normal_()
        model.embeddings.cls_token.normal_()
    directory = tmp_path_factory.mktemp("ast_tiny")
    model.save_pretrained(directory)
    return str(directory), model.eval()


@pytest.mark.parametrize("pooling", ["cls_dist", "patch_mean"])
def test_pooling_matches_transformers(tiny_checkpoint, pooling):
    generator = torch.Generator().manual_seed(0)
    directory, reference = tiny_checkpoint
    backbone = ASTBackbone(pretrained=directory, max_length=128, pooling=pooling).eval()
    features = torch.randn(3, 128, 128, generator=generator)
    with torch.no_grad():
        output = reference(input_values=features)
        expected = (
            output.pooler_output
            if pooling == "cls_dist"
            else output.last_hidden_state[:, 2:].mean(dim=1)
        )
        embeddings = backbone(features)
    assert backbone.embedding_dim == 32
    assert embeddings.shape == (3, 32)
    torch.testing.assert_close(embeddings, expected)


def test_pretrained_model_is_built_in_training_mode(tiny_checkpoint):
    # from_pretrained's eval mode would switch off the checkpoint's dropout during fine-tuning
    backbone = ASTBackbone(pretrained=tiny_checkpoint[0], max_length=128)
    assert all(module.training for module in backbone.modules())
    assert ASTBackbone(pretrained=tiny_checkpoint[0], max_length=64).ast.training  # adapted


def test_shorter_input_keeps_centre_of_time_grid(tiny_checkpoint):
    generator = torch.Generator().manual_seed(0)
    directory, reference = tiny_checkpoint
    backbone = ASTBackbone(pretrained=directory, max_length=64)  # (64 - 16) // 10 + 1 = 5
    original = reference.embeddings.position_embeddings[0]
    adapted = backbone.ast.embeddings.position_embeddings[0]
    f_dim, t_old, t_new = 12, 12, 5
    start = 6 - 2  # centre: t_old // 2 - t_new // 2
    expected = torch.empty(2 + f_dim * t_new, 32)
    expected[:2] = original[:2]
    for f in range(f_dim):
        for t in range(t_new):
            expected[2 + f * t_new + t] = original[2 + f * t_old + start + t]
    torch.testing.assert_close(adapted, expected, rtol=0, atol=0)
    assert backbone.ast.config.max_length == 64
    assert backbone(torch.randn(2, 64, 128, generator=generator)).shape == (2, 32)
    # every other weight is the checkpoint's
    state = backbone.ast.state_dict()
    for key, value in reference.state_dict().items():
        if key != "embeddings.position_embeddings":
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def test_longer_input_interpolates_time_grid(tiny_checkpoint):
    generator = torch.Generator().manual_seed(0)
    directory, reference = tiny_checkpoint
    backbone = ASTBackbone(pretrained=directory, max_length=200)  # 19 time patches
    original = reference.embeddings.position_embeddings.detach()
    grid = original[:, 2:].reshape(1, 12, 12, 32).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(grid, size=(12, 19), mode="bilinear")
    expected = torch.cat([original[:, :2], resized.permute(0, 2, 3, 1).reshape(1, 12 * 19, 32)], 1)
    torch.testing.assert_close(backbone.ast.embeddings.position_embeddings.detach(), expected)
    assert backbone(torch.randn(1, 200, 128, generator=generator)).shape == (1, 32)


def test_random_init_has_position_information():
    torch.manual_seed(0)
    backbone = ASTBackbone(pretrained=None, max_length=128, **TINY)
    assert backbone.ast.embeddings.position_embeddings.std() > 0
    assert backbone.ast.config.num_hidden_layers == 2


def test_adapt_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\[1, 146, H\]"):
        adapt_position_embeddings(torch.zeros(1, 10, 4), f_dim=12, t_old=12, t_new=5)


def test_wrong_input_shape_is_reported():
    backbone = ASTBackbone(pretrained=None, max_length=128, **TINY)
    with pytest.raises(ValueError, match=r"\[B, 128, 128\].*\(2, 100, 128\)"):
        backbone(torch.zeros(2, 100, 128))


def test_num_mel_bins_must_match_checkpoint(tiny_checkpoint):
    directory, _ = tiny_checkpoint
    with pytest.raises(ValueError, match=r"num_mel_bins=128.*got 64"):
        ASTBackbone(pretrained=directory, max_length=128, num_mel_bins=64)


def test_invalid_pooling():
    with pytest.raises(ValueError, match="pooling"):
        ASTBackbone(pretrained=None, pooling="max", **TINY)  # type: ignore[arg-type]


def test_missing_local_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ASTBackbone(pretrained=str(tmp_path / "no" / "such" / "model"))


def test_hub_id_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"HF_HUB_OFFLINE.*save_pretrained"):
        ASTBackbone(pretrained="add-lightning-tests/no-such-ast-model")
