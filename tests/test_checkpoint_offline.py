"""A checkpoint of `fit` loads with nothing but itself: no pretrained weights, no hub access."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from console_runs import console_status
from tiny_runs import synthetic_dataset, tiny_run_config
from transformers import ASTConfig, ASTModel

from add_lightning.cli import main
from add_lightning.inference import load_trained_model
from add_lightning.lightning_cli import AddLightningCLI
from add_lightning.models import ASTBackbone, AudioClassifier, BEATsBackbone
from add_lightning.models.backbones.beats_config import BEATsConfig
from add_lightning.models.classifier import BACKBONE_SOURCE_KEY

HUB_ID = "MIT/ast-finetuned-audioset-10-10-0.4593"
AST_CLASS = "add_lightning.models.ASTBackbone"
BEATS_CLASS = "add_lightning.models.BEATsBackbone"

# Architectures that differ from every default of the backbones' arguments, so that a model
# rebuilt from the defaults instead of the stored architecture fails to load the weights.
AST_SOURCE = ASTConfig(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=37,
    max_length=64,  # adapted to the 48 frames of the data
    num_mel_bins=32,
    layer_norm_eps=1e-6,
    hidden_act="gelu_new",
    qkv_bias=False,
)
BEATS_SOURCE = BEATsConfig(
    encoder_layers=2,
    encoder_embed_dim=32,
    encoder_ffn_embed_dim=48,
    encoder_attention_heads=4,
    embed_dim=24,
    conv_pos=16,
    conv_pos_groups=4,
    relative_position_embedding=True,
    num_buckets=16,
    max_distance=32,
    gru_rel_pos=True,
    deep_norm=True,
    dropout=0.0,
    attention_dropout=0.0,
    encoder_layerdrop=0.0,
)


def _write_ast(directory: Path) -> Path:
    torch.manual_seed(1)
    ASTModel(AST_SOURCE).save_pretrained(directory)
    return directory


def _write_beats(path: Path) -> Path:
    torch.manual_seed(2)
    arguments = dataclasses.asdict(BEATS_SOURCE)
    del arguments["finetuned_model"], arguments["predictor_class"]  # no architecture
    state = BEATsBackbone(**arguments).state_dict()
    torch.save({"cfg": dataclasses.asdict(BEATS_SOURCE), "model": state}, path)
    return path


def _source(kind: str, folder: Path) -> tuple[Path, str, dict]:
    """A pretrained source on disk, the argument naming it and its backbone block.

    The block gives only the source (and the AST input shape): the architecture is the source's.
    """
    if kind == "ast":
        source = _write_ast(folder / "ast_pretrained")
        init_args = {"pretrained": str(source), "max_length": 48, "num_mel_bins": 32}
        return source, "pretrained", {"class_path": AST_CLASS, "init_args": init_args}
    source = _write_beats(folder / "BEATs_tiny.pt")
    return (
        source,
        "checkpoint",
        {"class_path": BEATS_CLASS, "init_args": {"checkpoint": str(source)}},
    )


def _write_config(folder: Path, backbone: dict, epochs: int) -> Path:
    """A tiny run (synthetic data, 48 frames x 32 bins) whose backbone is ``backbone``."""
    dataset = synthetic_dataset(folder / "synthetic")
    config = yaml.safe_load(tiny_run_config(dataset, folder / "cache", max_epochs=epochs))
    config["model"]["init_args"]["backbone"] = backbone
    path = folder / f"config_{epochs}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _windows() -> torch.Tensor:
    return torch.randn(5, 48, 32, generator=torch.Generator().manual_seed(3))


def _metrics(cli: AddLightningCLI) -> dict[str, float]:
    return {key: float(value) for key, value in cli.trainer.callback_metrics.items()}


@pytest.fixture(scope="module", params=["ast", "beats"])
def trained(request, tmp_path_factory) -> dict:
    """`fit` from a pretrained source on disk; then the source is deleted.

    Recorded before the deletion, from the in-memory model that `fit` trained: its logits on
    fixed windows and its test metrics (``Trainer.test`` of that model), and the weights of an
    uninterrupted two-epoch run (the reference of the resumed one).
    """
    folder = tmp_path_factory.mktemp(f"offline_{request.param}")
    source, argument, backbone = _source(request.param, folder)
    run = folder / "run"
    config = _write_config(folder, backbone, epochs=1)
    cli = AddLightningCLI(
        args=["fit", "--config", str(config), "--trainer.default_root_dir", str(run)]
    )
    model = cli.model.eval()
    with torch.no_grad():
        logits = model(_windows())
    # saving the self-contained checkpoint left the module's own hyperparameters as given
    assert model.hparams["backbone"]["init_args"][argument] == str(source)
    test_metrics = cli.trainer.test(model, datamodule=cli.datamodule, verbose=False)[0]

    two_epochs = _write_config(folder, backbone, epochs=2)
    uninterrupted = ["--config", str(two_epochs), "--trainer.default_root_dir", str(folder / "2")]
    assert main(["fit", *uninterrupted]) == 0
    reference = torch.load(folder / "2" / "checkpoints" / "last.ckpt", weights_only=True)

    if source.is_dir():
        shutil.rmtree(source)
    else:
        source.unlink()
    return {
        "kind": request.param,
        "folder": folder,
        "source": source,
        "run": run,
        "checkpoint": run / "checkpoints" / "last.ckpt",
        "model": model,
        "logits": logits,
        "test_metrics": test_metrics,
        "two_epochs": reference,
    }


def test_checkpoint_stores_the_architecture_and_the_source(trained):
    checkpoint = torch.load(trained["checkpoint"], weights_only=True)
    stored = checkpoint["hyper_parameters"]["backbone"]["init_args"]
    given = checkpoint[BACKBONE_SOURCE_KEY]["init_args"]
    if trained["kind"] == "ast":
        assert stored["pretrained"] is None and given["pretrained"] == str(trained["source"])
        # the source's config, max_length after the adaptation to the data's 48 frames
        expected = {**AST_SOURCE.to_dict(), "max_length": 48}
        names = ("hidden_size", "intermediate_size", "layer_norm_eps", "hidden_act", "qkv_bias")
        for name in (*names, "max_length", "num_mel_bins", "num_attention_heads"):
            assert stored[name] == expected[name], name
    else:
        assert stored["checkpoint"] is None and given["checkpoint"] == str(trained["source"])
        for name in ("encoder_layers", "encoder_embed_dim", "embed_dim", "num_buckets"):
            assert stored[name] == getattr(BEATS_SOURCE, name), name


def test_load_trained_model_gives_the_logits_of_training(trained):
    loaded = load_trained_model(trained["checkpoint"])
    with torch.no_grad():
        logits = loaded.model(_windows())
    torch.testing.assert_close(logits, trained["logits"], rtol=0, atol=1e-6)
    model = AudioClassifier.load_from_checkpoint(trained["checkpoint"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(_windows()), trained["logits"], rtol=0, atol=1e-6)


def test_test_with_the_run_config_gives_the_metrics_of_training(trained, tmp_path):
    config = trained["run"] / "config.yaml"  # its backbone still names the deleted source
    assert str(trained["source"]) in config.read_text()
    args = ["test", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = AddLightningCLI(args=[*args, "--ckpt_path", str(trained["checkpoint"])])
    metrics = _metrics(cli)
    for key in ("test/loss", "test/acc", "test/f1"):
        assert math.isfinite(metrics[key])
        assert metrics[key] == pytest.approx(trained["test_metrics"][key], rel=1e-6, abs=1e-7), key
    # the stored architecture replaces the given source without a "replaced arguments" warning
    assert not [w for w in caught if "replaced by the checkpoint's" in str(w.message)]

    # a given architecture that contradicts the trained one is replaced, and said so with the
    # value actually used (the source's, not the argument's default stored as given)
    name, used = ("hidden_size", 32) if trained["kind"] == "ast" else ("encoder_layers", 2)
    other = [f"--model.init_args.backbone.init_args.{name}", "3"]
    with pytest.warns(UserWarning, match=rf"backbone\.init_args\.{name} {used} \(given 3\)"):
        cli = AddLightningCLI(args=[*args, "--ckpt_path", str(trained["checkpoint"]), *other])
    assert _metrics(cli)["test/loss"] == metrics["test/loss"]


def test_classify_through_the_console_script(trained, tmp_path, capsys):
    rng = np.random.default_rng(4)
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, 0.1 * rng.standard_normal(16000).astype(np.float32), 16000)
    output = tmp_path / "scores.json"
    argv = ["classify", "--ckpt_path", str(trained["checkpoint"]), str(clip)]
    assert console_status([*argv, "--output", str(output)]) == 0
    err = capsys.readouterr().err
    assert "classified 1 of 1 files" in err
    # reference: the in-memory model of `fit` on the clip's windows (the stored pipeline)
    windows = load_trained_model(trained["checkpoint"]).windows(
        *soundfile.read(clip, dtype="float32")
    )
    with torch.no_grad():
        expected = trained["model"](windows).softmax(dim=-1).mean(dim=0)
    scores = json.loads(output.read_text())["clips"][0]
    assert scores["error"] is None
    got = [scores["probabilities"][name] for name in trained["model"].class_names]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_fit_resumes_from_last_without_the_source(trained, tmp_path):
    # a copy of the shared run: resuming rewrites its last.ckpt, which the other tests read
    run = shutil.copytree(trained["run"], tmp_path / "run")
    args = ["fit", "--config", str(run / "config.yaml"), "--trainer.default_root_dir", str(run)]
    assert main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 0
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    reference = trained["two_epochs"]
    assert resumed["epoch"] == reference["epoch"] == 1
    assert resumed["global_step"] == reference["global_step"]
    assert resumed["state_dict"].keys() == reference["state_dict"].keys()
    for name, weight in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], weight, rtol=0, atol=1e-6)
    # the resumed run's checkpoints still name the source the training started from
    source = resumed[BACKBONE_SOURCE_KEY]["init_args"]
    assert str(trained["source"]) in source.values()


def test_hub_id_checkpoint_loads_offline_without_from_pretrained(tmp_path, monkeypatch):
    # the hub checkpoint, as if in the Hugging Face cache: a tiny model saved locally
    local = _write_ast(tmp_path / "cache_of_hub")
    original = ASTModel.from_pretrained.__func__
    calls: list[str] = []

    def cached(cls, name, *args, **kwargs):
        calls.append(name)
        assert name == HUB_ID
        return original(cls, str(local), *args, **kwargs)

    monkeypatch.setattr(ASTModel, "from_pretrained", classmethod(cached))
    init_args = {"pretrained": HUB_ID, "max_length": 48, "num_mel_bins": 32}
    config = _write_config(tmp_path, {"class_path": AST_CLASS, "init_args": init_args}, epochs=1)
    run = tmp_path / "run"
    cli = AddLightningCLI(
        args=["fit", "--config", str(config), "--trainer.default_root_dir", str(run)]
    )
    assert calls == [HUB_ID]
    with torch.no_grad():
        logits = cli.model.eval()(_windows())

    def offline(cls, name, *args, **kwargs):
        raise AssertionError(f"from_pretrained({name!r}) called while loading a checkpoint")

    monkeypatch.setattr(ASTModel, "from_pretrained", classmethod(offline))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint = run / "checkpoints" / "last.ckpt"
    loaded = load_trained_model(checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(_windows()), logits, rtol=0, atol=1e-6)
    test = ["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(checkpoint)]
    cli = AddLightningCLI(args=[*test, "--trainer.default_root_dir", str(tmp_path / "test")])
    assert math.isfinite(_metrics(cli)["test/loss"])


def test_ast_init_args_cover_every_config_field():
    # reference: transformers' ASTConfig signature (its own keyword-only fields)
    fields = [
        name
        for name, parameter in inspect.signature(ASTConfig.__init__).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    tiny = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 37}
    backbone = ASTBackbone(pretrained=None, max_length=48, num_mel_bins=32, **tiny)
    init_args = backbone.checkpoint_init_args()
    assert set(init_args) == {"pretrained", *fields}
    assert set(init_args) <= set(inspect.signature(ASTBackbone.__init__).parameters)


def test_rebuilt_backbones_equal_the_pretrained_ones(tmp_path):
    features = torch.randn(2, 48, 32, generator=torch.Generator().manual_seed(5))
    pretrained = [
        ASTBackbone(pretrained=str(_write_ast(tmp_path / "ast")), max_length=48, num_mel_bins=32),
        BEATsBackbone(checkpoint=str(_write_beats(tmp_path / "beats.pt"))),
    ]
    for backbone in pretrained:
        rebuilt = type(backbone)(**backbone.checkpoint_init_args())
        rebuilt.load_state_dict(backbone.state_dict(), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(rebuilt.eval()(features), backbone.eval()(features))
    beats = pretrained[1]
    rebuilt = BEATsBackbone(**beats.checkpoint_init_args())
    assert rebuilt.config == beats.config
