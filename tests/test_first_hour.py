"""What a new user meets in the first hour, through the real console script.

The README's commands for own data, the run's console output when it goes to a file (one line
per epoch, no advertisement, no deprecation noise), TensorBoard's step of `test` metrics, no
best.ckpt chosen on the test fold, and a `--help` that loads no model code.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from console_runs import heavy_modules_loaded_by
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from add_lightning.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("add-lightning")


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("ADD_LIGHTNING_TRACEBACK", None)
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_help_lists_every_command_without_importing_torch():
    code = (
        "import sys; from add_lightning.cli import main; main(['--help']); "
        "print(sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("[]")  # none of the three was imported
    listed = re.findall(r"^  (\S+)  ", result.stdout, flags=re.M)
    assert listed == list(COMMANDS)
    assert main([]) == 0


def test_unknown_command_is_named(capsys):
    assert main(["fitt"]) == 2
    assert "unknown command 'fitt'" in capsys.readouterr().err


# Quickstart data, smaller: 3 classes x 10 clips of 1 s, 5 folds; the tiny AST of ast_tiny.yaml.
def _synthetic_args(root: Path, run: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(REPO / "configs/quickstart.yaml"),
        "--data.init_args.dataset.init_args.root",
        str(root / "synthetic"),
        "--data.init_args.dataset.init_args.num_classes",
        "3",
        "--data.init_args.dataset.init_args.clips_per_class",
        "10",
        "--data.init_args.cache_dir",
        str(root / "cache"),
        "--data.init_args.batch_size",
        "8",
        "--trainer.max_epochs",
        "2",
        "--trainer.default_root_dir",
        str(run),
        *extra,
    ]


def _scalars(run: Path) -> dict[str, list[int]]:
    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: [event.step for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_run_logged_to_a_file_is_readable(tmp_path):
    run = tmp_path / "run"
    fit = _run("fit", *_synthetic_args(tmp_path, run))  # stdout and stderr are pipes, not a tty
    assert fit.returncode == 0, fit.stderr[-3000:]
    output = fit.stdout + fit.stderr
    # one line per epoch, with its time and metrics
    epochs = re.findall(r"^epoch (\d+)/2  \d+\.\d s  train/loss \S+ .*val/acc \S+", output, re.M)
    assert epochs == ["1", "2"]
    assert "💡 Tip" not in output and "litlogger" not in output
    assert "LeafSpec" not in output
    # the package's own INFO records reach the console: what was split and computed
    assert "fold 1: 24 training, 6 validation, 6 test clips, 3 classes" in output
    # validation is the test fold here: no checkpoint is chosen by val/acc
    assert "No best.ckpt: validation uses the test fold" in output
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]

    before = _scalars(run)
    config, last = str(run / "config.yaml"), str(run / "checkpoints/last.ckpt")
    assert main(["test", "--config", config, "--ckpt_path", last]) == 0  # its output is not read
    trained_steps = torch.load(last, weights_only=False, map_location="cpu")["global_step"]
    after = _scalars(run)
    # test metrics sit at the step the checkpoint was trained to, not at 0; no `epoch` point
    assert after["test/acc"] == [trained_steps] and trained_steps > 0
    assert after["epoch"] == before["epoch"]
    assert max(before["train/loss_epoch"]) <= trained_steps

    predict = _run("predict", "--config", config, "--ckpt_path", last)
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert f"Wrote 6 predictions to {run / 'predictions.npz'}" in predict.stdout + predict.stderr


def test_best_checkpoint_only_when_validation_is_not_the_test_data(tmp_path):
    run = tmp_path / "run"
    args = _synthetic_args(tmp_path, run, "--data.init_args.val_fraction", "0.25")
    args[args.index("--trainer.max_epochs") + 1] = "1"
    assert main(["fit", *args]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def _readme_command(marker: str) -> str:
    blocks = re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text(), flags=re.S)
    (command,) = [block for block in blocks if marker in block]
    return command


def _write_clips(root: Path, classes: tuple[str, ...], per_class: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for clip in range(per_class):
            tone = np.sin(2 * np.pi * 300 * (index + 1) * np.arange(8000) / 8000)
            noise = 0.05 * rng.standard_normal(8000)
            path = root / name / f"{clip}.wav"
            soundfile.write(path, (0.3 * tone + noise).astype(np.float32), 8000)  # 8 kHz, 1 s
            paths.append(f"{name}/{clip}.wav")
    return paths


def test_own_data_commands_of_the_readme_run_on_a_cpu(tmp_path):
    audio = tmp_path / "my_audio"
    paths = _write_clips(audio, ("bird", "car", "dog"), per_class=5)
    command = _readme_command("data/folder.yaml --config configs/experiments/ast_tiny_cpu.yaml")
    words = shlex.split(command.replace("path/to/my_audio", str(audio)))
    assert words[0] == ".venv/bin/add-lightning"
    run = tmp_path / "run"
    words[words.index("--trainer.default_root_dir") + 1] = str(run)
    quick = ["--trainer.max_epochs", "1", "--data.init_args.num_workers", "0"]
    cache = ["--data.init_args.cache_dir", str(tmp_path / "cache")]
    assert main([*words[1:], *quick, *cache]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["init_args"]["dataset"]["init_args"]["num_folds"] == 5

    # a manifest with its own split column: `fold null`, and folder.yaml's num_folds unused
    splits = ["train", "train", "train", "validation", "test"]
    rows = [f"{path},{path.split('/')[0]},{splits[int(path[-5])]}" for path in paths]
    (audio / "manifest.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    words = shlex.split(command.replace("path/to/my_audio", str(audio / "manifest.csv")))
    words[words.index("--trainer.default_root_dir") + 1] = str(tmp_path / "manifest_run")
    assert main([*words[1:], "--data.init_args.fold", "null", *quick, *cache]) == 0
    assert (tmp_path / "manifest_run" / "checkpoints" / "best.ckpt").is_file()  # own val split


def test_gpu_config_runs_on_a_machine_without_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from add_lightning.lightning_cli import AddLightningCLI

    args = _synthetic_args(
        tmp_path, tmp_path / "run", "--config", str(REPO / "configs/trainer/gpu.yaml")
    )
    cli = AddLightningCLI(args=args, run=False)
    assert type(cli.trainer.accelerator).__name__ == "CPUAccelerator"
    assert cli.trainer.precision == "bf16-mixed"


def test_fit_without_an_end_warns(tmp_path, monkeypatch):
    from lightning.pytorch import Trainer

    monkeypatch.setattr(Trainer, "fit", lambda *args, **kwargs: None)
    args = _synthetic_args(tmp_path, tmp_path / "run")
    at = args.index("--trainer.max_epochs")
    del args[at : at + 2]
    args += ["--trainer.max_epochs", "null"]
    with pytest.warns(UserWarning, match="Lightning trains for 1000 epochs"):
        main(["fit", *args])


def test_frames_that_differ_from_the_backbone_are_refused_before_any_work(tmp_path):
    args = _synthetic_args(tmp_path, tmp_path / "run", "--data.init_args.features.target_frames")
    with pytest.raises(ValueError, match=r"target_frames` 256 .* max_length 128"):
        main(["fit", *args, "256"])
    assert not (tmp_path / "synthetic").exists()  # refused before the data set was written


def test_compare_and_figures_load_no_model_code():
    code = (
        "import add_lightning.experiments.cli, add_lightning.experiments.compare, "
        "add_lightning.experiments.figures"
    )
    assert heavy_modules_loaded_by(code) == []


def test_null_from_the_command_line_reaches_nested_classes(tmp_path):
    from add_lightning.lightning_cli import AddLightningCLI

    audio = tmp_path / "my_audio"
    _write_clips(audio, ("bird", "car", "dog"), per_class=4)
    command = shlex.split(
        _readme_command("data/folder.yaml --config configs/experiments/ast_tiny_cpu.yaml")
    )
    args = [word.replace("path/to/my_audio", str(audio)) for word in command[2:]]
    args += ["--data.init_args.dataset.init_args.num_folds", "null"]
    args += ["--data.init_args.fold", "null", "--data.init_args.val_fraction", "0.25"]
    args += ["--model.init_args.backbone.init_args.pretrained", "null"]
    args += ["--data.init_args.cache_dir", str(tmp_path / "cache")]
    cli = AddLightningCLI(args=args, run=False)
    assert cli.datamodule.dataset.num_folds is None  # was refused: "Given value: None" (a str)
    assert cli.model.hparams["backbone"]["init_args"]["pretrained"] is None  # was "None"
    assert cli.datamodule.dataset.root.name == "my_audio"  # the other dataset values are kept


def test_the_readme_commands_that_choose_a_loss_run_on_smaller_data(tmp_path, monkeypatch, capsys):
    # README, "Which loss, which weights?": the commands as written (run from a folder without
    # configs/, so the packaged quickstart is used), on 3 classes x 10 clips, 1 epoch, 1 seed
    # and 1 search trial on 1 fold (the search itself is tested in test_search.py)
    blocks = re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text(), flags=re.S)
    (paired,) = [block for block in blocks if "--baseline CE" in block]
    (search,) = [block for block in blocks if "add-lightning search" in block]
    smaller = _synthetic_args(tmp_path, tmp_path / "unused")[2:-2]  # data and epochs only
    smaller[smaller.index("--trainer.max_epochs") + 1] = "1"
    monkeypatch.chdir(tmp_path)
    loop, compare = paired.splitlines()
    losses, command = re.fullmatch(r"for loss in (.+?); do (.+); done", loop).groups()
    for loss in losses.split():
        words = shlex.split(command.replace("$loss", loss))
        assert words[0] == ".venv/bin/add-lightning"
        assert main([*words[1:], *smaller, "--seeds", "0"]) == 0
    capsys.readouterr()
    assert main(shlex.split(compare)[1:]) == 0
    table = capsys.readouterr().out
    # the paired table's row: CE + ADD minus CE over the 2 shared units, with its interval (or
    # the note that says why there is none); the numbers are checked in test_compare_statistics
    paired_table = table[table.index("Difference to CE") :]
    row = re.search(r"^\| CE \+ ADD \(1,1,1,1\) \| [+-]\d+\.\d+ [\[(]", paired_table, re.M)
    assert row is not None, table
    assert (tmp_path / "runs/paired/differences.csv").is_file()

    words = shlex.split(search)
    assert words[:2] == [".venv/bin/add-lightning", "search"]
    assert main([*words[1:], *smaller, "--trials", "1", "--workers", "1", "--folds", "1"]) == 0
    best = yaml.safe_load((tmp_path / "runs/quickstart_search/best.yaml").read_text())
    assert best["data"]["init_args"]["val_fraction"] > 0  # chosen on an inner split
    assert (tmp_path / "runs/quickstart_search/best/results.csv").is_file()  # tested once
