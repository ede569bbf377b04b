"""What the console shows a user (#25 item 4): short config errors, progress in a log file, no
warnings the project causes itself, FLOPs in the model summary, figures of a `fit` run, no
empty folder left by a failed download.

One `fit` runs in a subprocess (its stderr a pipe, as when redirected to a file) and several
tests read its output; the rest call ``console_main`` in-process, capturing stdout/stderr.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from console_runs import console_output, run_console
from console_runs import console_status as _status
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count
from tiny_runs import synthetic_dataset, tiny_ast, tiny_run_config

# the CPU cores this process may use, as the data module counts them
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("console")
    path = folder / "tiny.yaml"
    path.write_text(tiny_run_config(synthetic_dataset(folder / "synthetic")))
    return path


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


# ----------------------------------------------------------------- config key typos
def test_unknown_trainer_key_in_a_file_is_one_line_with_file_and_closest_key(tiny_config, tmp_path):
    typo = _write(tmp_path / "typo.yaml", {"trainer": {"max_epoch": 3}})
    configs = ["--config", str(tiny_config), "--config", str(typo)]
    done = console_output(["fit", *configs])
    assert done.returncode == 2  # a config that does not parse is a usage error
    lines = done.stderr.splitlines()
    assert lines[0] == (
        f"add-lightning: error: unknown key `trainer.max_epoch` in {typo}; "
        "did you mean `trainer.max_epochs`?"
    )
    assert len(lines) == 2 and "ADD_LIGHTNING_TRACEBACK=1" in lines[1]
    assert "usage:" not in done.stderr


def test_unknown_backbone_key_names_the_class_file_and_closest_key(tiny_config, tmp_path, capsys):
    backbone = {"init_args": {"hiden_size": 32}}
    typo = _write(tmp_path / "typo.yaml", {"model": {"init_args": {"backbone": backbone}}})
    assert _status(["fit", "--config", str(tiny_config), "--config", str(typo)]) == 2
    key = "model.init_args.backbone.init_args"
    assert capsys.readouterr().err.splitlines()[0] == (
        f"add-lightning: error: unknown key `{key}.hiden_size` (not an argument of "
        f"add_lightning.models.ASTBackbone) in {typo}; did you mean `{key}.hidden_size`?"
    )


def test_unknown_keys_on_the_command_line_get_the_closest_key(tiny_config, capsys):
    config = ["fit", "--config", str(tiny_config)]
    assert _status([*config, "--model.init_args.backbone.init_args.num_hiden_layers", "2"]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert "`model.init_args.backbone.init_args.num_hiden_layers`" in first
    assert "on the command line" in first
    assert first.endswith("did you mean `model.init_args.backbone.init_args.num_hidden_layers`?")
    assert _status([*config, "--trainer.max_epochz", "3"]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert "unrecognized arguments: --trainer.max_epochz 3" in first
    assert first.endswith("did you mean `--trainer.max_epochs`?")


def test_full_parse_error_on_request(tiny_config, tmp_path, capsys, monkeypatch):
    backbone = {"init_args": {"hiden_size": 32}}
    typo = _write(tmp_path / "typo.yaml", {"model": {"init_args": {"backbone": backbone}}})
    monkeypatch.setenv("ADD_LIGHTNING_TRACEBACK", "1")
    assert _status(["fit", "--config", str(tiny_config), "--config", str(typo)]) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Option 'hiden_size' is not accepted" in err


# ------------------------------------------------------- one fit, its stderr a pipe
@pytest.fixture(scope="module")
def fit_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("fit")
    config = folder / "fit.yaml"
    config.write_text(
        tiny_run_config(
            synthetic_dataset(folder / "synthetic"),  # 3 classes x 4 clips
            cache=folder / "cache",
            enable_model_summary=True,
            data_args={"num_workers": CORES + 1},
        )
    )
    run = folder / "run"
    done = run_console(["fit", "--config", str(config), "--trainer.default_root_dir", str(run)])
    return run, done


def test_cache_progress_is_log_lines_when_stderr_is_not_a_terminal(fit_run):
    _, done = fit_run
    assert "\r" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "fbank cache:" in line]
    assert lines[-1].endswith("fbank cache: 12/12 clips")
    assert 1 < len(lines) <= 11  # a line per tenth of the clips at most, and the last


def test_no_warnings_the_project_causes_itself(fit_run):
    _, done = fit_run
    assert "transfer_batch_to_device" not in done.stderr
    assert "suggested max number of worker" not in done.stderr
    # more workers than cores are lowered to the cores, and the log says so once
    said = f"Using {CORES} DataLoader workers, not num_workers {CORES + 1}"
    assert done.stderr.count(said) == 1


def test_model_summary_counts_flops(fit_run):
    """Total FLOPs of the tiny AST, counted by hand: 2 x the multiply-adds of its layers."""
    _, done = fit_run
    ast = tiny_ast(48, 32)  # the run's backbone: 48 frames x 32 mel bins, 16 x 16 patches
    hidden, inner = ast["hidden_size"], ast["intermediate_size"]
    patches = ((32 - 16) // 10 + 1) * ((48 - 16) // 10 + 1)  # stride 10 (ASTBackbone default)
    tokens = patches + 2  # and the CLS and distillation tokens
    patch_embedding = 2 * patches * 16 * 16 * hidden
    linear_layers = 2 * tokens * (4 * hidden * hidden + 2 * hidden * inner)  # q, k, v, o, MLP
    attention = 2 * 2 * tokens * tokens * hidden  # q k^T and its product with v
    head = 2 * hidden * 3
    without_attention = patch_embedding + linear_layers + head
    # torch's FlopCounterMode counts no scaled_dot_product_attention kernel of the CPU
    totals = {
        get_human_readable_count(without_attention),
        get_human_readable_count(without_attention + attention),
    }
    assert any(f"Total FLOPs: {total}" in done.stdout for total in totals), done.stdout


# ----------------------------------------------------------------------- figures
def test_figures_of_a_fit_run_from_its_predict_output(fit_run, tmp_path, capsys):
    run, _ = fit_run
    output = tmp_path / "figure.png"
    figures = ["figures", str(run), "--output", str(output)]
    assert _status(figures) == 1  # no predictions yet: the message says what to run
    err = capsys.readouterr().err
    assert f"add-lightning predict --config {run / 'config.yaml'}" in err
    predict = ["predict", "--config", str(run / "config.yaml")]
    assert _status([*predict, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]) == 0
    assert (run / "predictions.npz").is_file()
    assert _status(figures) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------- downloads
def test_failed_download_leaves_no_empty_folder(tiny_config, tmp_path, capsys):
    root = tmp_path / "mistyped" / "ESC50"
    dataset = {
        "class_path": "add_lightning.data.ESC50",
        "init_args": {
            "root": str(root),
            "download": True,
            "url": (tmp_path / "absent" / "master.zip").as_uri(),  # fails as offline would
        },
    }
    config = _write(tmp_path / "esc50.yaml", {"data": {"init_args": {"dataset": dataset}}})
    assert _status(["fit", "--config", str(tiny_config), "--config", str(config)]) == 1
    assert "Could not download" in capsys.readouterr().err
    assert not (tmp_path / "mistyped").exists()


# ------------------------------------------------------------------ batch transfer
def test_data_module_batch_transfer_equals_lightnings_move(tmp_path):
    """The data module's direct move of a flat batch gives what ``move_data_to_device`` gives
    (the data module's hook, so that Lightning does not warn about the model's)."""
    from add_lightning.data import AudioDataModule, SyntheticDataset

    module = AudioDataModule(SyntheticDataset(str(tmp_path), num_classes=3, clips_per_class=5))
    generator = torch.Generator().manual_seed(0)
    batch = {
        "features": torch.randn(3, 8, 4, generator=generator),
        "target": torch.tensor([0, 2, 1]),
        "num_frames": torch.tensor([8, 5, 3]),
        "clip_id": ["a.wav", "b.wav", "c.wav"],
    }
    for device in (torch.device("cpu"), torch.device("meta")):  # meta: a move that happens
        moved = module.transfer_batch_to_device(batch, device, 0)
        expected = move_data_to_device(batch, device)
        assert type(moved) is dict and list(moved) == list(expected)
        assert moved["clip_id"] == expected["clip_id"] == ["a.wav", "b.wav", "c.wav"]
        for key in ("features", "target", "num_frames"):
            assert moved[key].device == expected[key].device == device
            assert moved[key].dtype == batch[key].dtype and moved[key].shape == batch[key].shape
            if device.type == "cpu":
                assert torch.equal(moved[key], batch[key])
    # anything else (here a nested dict) is Lightning's, which moves the nested tensor too
    nested = {"features": torch.zeros(2), "extra": {"mask": torch.zeros(2)}}
    moved = module.transfer_batch_to_device(nested, torch.device("meta"), 0)
    assert moved["extra"]["mask"].device.type == "meta"
