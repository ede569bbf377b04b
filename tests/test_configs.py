"""Every YAML in configs/ parses and instantiates (without downloads or real data sets)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from config_files import resolved
from lightning.pytorch import Trainer
from test_backbone_hf_audio import TINY
from tiny_runs import tiny_ast
from transformers import ASTConfig, ASTModel

from add_lightning.lightning_cli import AddLightningCLI
from add_lightning.losses import ADDLoss, ClassificationLoss
from add_lightning.models import AudioClassifier

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
DATA_CONFIGS = [p for p in CONFIGS if p.parent.name == "data"]
# configs/search/ holds search spaces of `add-lightning search` (tests/test_search.py reads them)
OTHER_CONFIGS = [p for p in CONFIGS if p.parent.name not in ("data", "search")]

# A tiny AST that each config under test is composed onto (after configs/data/synthetic.yaml).
TINY_MODEL = {
    "model": {
        "init_args": {
            "backbone": {
                "class_path": "add_lightning.models.ASTBackbone",
                "init_args": tiny_ast(128, 128),
            },
            # a model has no default optimizer; the files under test that set one replace it
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 1.0e-3}},
        }
    },
}
BEATS_TINY = {
    "checkpoint": None,
    "encoder_layers": 1,
    "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 48,
    "encoder_attention_heads": 4,
    "embed_dim": 24,
    "conv_pos": 16,
    "conv_pos_groups": 4,
}


HF_AUDIO_TINY = {family: TINY[family] for family in ("wav2vec2", "hubert", "wavlm", "whisper")}


@pytest.fixture(scope="module")
def local_ast(tmp_path_factory) -> str:
    """Stands in for the hub checkpoint: same max_length/num_mel_bins, tiny width."""
    directory = tmp_path_factory.mktemp("ast_local")
    config = ASTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_length=1024,
        num_mel_bins=128,
    )
    ASTModel(config).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> str:
    """A config that points the synthetic data set and its caches into a temporary folder."""
    directory = tmp_path_factory.mktemp("synthetic")
    path = directory / "local_data.yaml"
    data = {"dataset": {"init_args": {"root": str(directory / "data")}}, "cache_dir": None}
    path.write_text(yaml.safe_dump({"data": {"init_args": data}}))
    return str(path)


def _no_downloads(config: dict, local_ast: str) -> dict:
    """A config composed last that replaces pretrained weights and GPUs by local stand-ins."""
    overrides: dict = {}
    backbone = config.get("model", {}).get("init_args", {}).get("backbone", {})
    class_path = backbone.get("class_path", "")
    if class_path.endswith("ASTBackbone") and backbone.get("init_args", {}).get("pretrained"):
        init_args = {"pretrained": local_ast}
    elif class_path.endswith("BEATsBackbone"):
        init_args = BEATS_TINY
    elif class_path.endswith("HFAudioEncoder"):  # a tiny random encoder of the same family
        family = backbone["init_args"]["pretrained"].split("/")[-1].split("-")[0]
        init_args = {"pretrained": None, "config": HF_AUDIO_TINY[family]}
    else:
        init_args = None
    if init_args is not None:
        overrides["model"] = {"init_args": {"backbone": {"init_args": init_args}}}
    # the synthetic data's frames follow the backbone, as a user's data config must
    max_length = backbone.get("init_args", {}).get("max_length")
    if max_length is not None and class_path.endswith("ASTBackbone"):
        overrides["data"] = {"init_args": {"features": {"target_frames": max_length}}}
    if config.get("trainer", {}).get("accelerator") == "gpu":
        overrides["trainer"] = {"accelerator": "cpu", "devices": 1, "strategy": "auto"}
    return overrides


def _compose(path: Path, local_ast: str, local_data: str, tmp_path: Path) -> list[str]:
    """Arguments: synthetic data + tiny AST, the file under test, then local stand-ins."""
    config = resolved(path)
    base, overrides = tmp_path / "base.yaml", tmp_path / "overrides.yaml"
    base.write_text(yaml.safe_dump(TINY_MODEL))
    overrides.write_text(yaml.safe_dump(_no_downloads(config, local_ast)))
    synthetic = str(REPO / "configs/data/synthetic.yaml")
    return [
        *("--config", synthetic, "--config", local_data, "--config", str(base)),
        *("--config", str(path), "--config", local_data, "--config", str(overrides)),
        *("--trainer.default_root_dir", str(tmp_path / "run")),
    ]


@pytest.mark.parametrize("path", OTHER_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_instantiates(path, local_ast, local_data, tmp_path):
    config = resolved(path)
    cli = AddLightningCLI(args=_compose(path, local_ast, local_data, tmp_path), run=False)
    assert isinstance(cli.model, AudioClassifier)
    assert isinstance(cli.model.loss, ClassificationLoss)
    assert isinstance(cli.trainer, Trainer)
    assert cli.model.num_classes == cli.datamodule.num_classes
    optimizer = cli.model.configure_optimizers()
    if isinstance(optimizer, dict):
        optimizer = optimizer["optimizer"]
    assert isinstance(optimizer, torch.optim.Optimizer)
    # the settings of the file under test arrived in the objects
    model_args = config.get("model", {}).get("init_args", {})
    expected_lr = model_args.get("optimizer", {}).get("init_args", {}).get("lr")
    if expected_lr is not None:
        assert optimizer.defaults["lr"] == pytest.approx(float(expected_lr))
    data_args = config.get("data", {}).get("init_args", {})
    if "batch_size" in data_args:
        assert cli.datamodule.batch_size == data_args["batch_size"]
    if "window_type" in data_args.get("features", {}):
        assert cli.datamodule.features.window_type == data_args["features"]["window_type"]


class _ParseOnly(AddLightningCLI):
    def instantiate_classes(self) -> None:  # the real data sets are not available in tests
        pass


@pytest.mark.parametrize("path", DATA_CONFIGS, ids=lambda p: p.name)
def test_data_config_parses_with_model_configs(path):
    waveforms = "waveform" in path.stem
    experiment = "wavlm_er.yaml" if waveforms else "ast_esc50.yaml"
    args = ["--config", str(path), "--config", str(REPO / "configs/experiments" / experiment)]
    cli = _ParseOnly(args=args, run=False)
    module = "WaveformDataModule" if waveforms else "AudioDataModule"
    assert cli.config.data.class_path == f"add_lightning.data.{module}"


def test_quickstart_runs_one_batch(local_data, tmp_path):
    """configs/quickstart.yaml end to end for one batch (fast_dev_run) on generated audio."""
    cli = AddLightningCLI(
        args=[
            *("fit", "--config", str(REPO / "configs/quickstart.yaml"), "--config", local_data),
            *("--data.init_args.normalization", "audioset", "--trainer.fast_dev_run", "true"),
            *("--trainer.default_root_dir", str(tmp_path / "run")),
        ]
    )
    # reference: the values written in the YAML reached the run, and it trained one batch
    quickstart = yaml.safe_load((REPO / "configs/quickstart.yaml").read_text())
    data, model = quickstart["data"]["init_args"], quickstart["model"]["init_args"]
    assert cli.trainer.global_step == 1
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    assert cli.datamodule.batch_size == data["batch_size"]
    assert cli.datamodule.num_classes == data["dataset"]["init_args"]["num_classes"]
    assert cli.model.backbone.input_shape == (data["features"]["target_frames"], 128)
    config = cli.model.backbone.ast.config
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        assert getattr(config, name) == model["backbone"]["init_args"][name], name
    (group,) = cli.trainer.optimizers[0].param_groups
    assert group["initial_lr"] == model["optimizer"]["init_args"]["lr"]
    assert isinstance(cli.model.loss.embedding, ADDLoss)


def test_configs_exist():
    names = {str(p.relative_to(REPO / "configs")) for p in CONFIGS}
    for required in (
        "model/ast.yaml",
        "model/ast_tiny.yaml",
        "loss/ce.yaml",
        "loss/focal.yaml",
        "loss/opl.yaml",
        "loss/add.yaml",
        "trainer/cpu.yaml",
        "trainer/gpu.yaml",
        "trainer/ddp.yaml",
        "experiments/ast_esc50.yaml",
    ):
        assert required in names


@pytest.mark.parametrize(
    ("ablation", "lambdas"),
    [
        ("1000", (1, 0, 0, 0)),
        ("0100", (0, 1, 0, 0)),
        ("0010", (0, 0, 1, 0)),
        ("0001", (0, 0, 0, 1)),
        ("1010", (1, 0, 1, 0)),
        ("1111", (1, 1, 1, 1)),
    ],
)
def test_ablation_lambdas(ablation, lambdas):
    config = resolved(REPO / f"configs/loss/ablation/add_{ablation}.yaml")
    init_args = config["model"]["init_args"]["loss"]["init_args"]["embedding"]["init_args"]
    keys = ("lambda_mu_p", "lambda_sigma_p", "lambda_mu_n", "lambda_sigma_n")
    assert tuple(init_args[k] for k in keys) == lambdas
