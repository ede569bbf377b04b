"""Each command that loads a checkpoint reads the file once: one ``torch.load`` of it.

Reading a checkpoint costs its size in I/O and memory, and each read is one more place where
the file may have changed; `fit --ckpt_path` (a file or `last`), `validate`, `test`,
`predict`, `classify` and `export` take everything (the model's hyperparameters, its input
pipeline, the Trainer's restore) from one read. The Trainer's restore takes that read only
while the file is the one that was read, unchanged, and only once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from add_lightning.checkpoint import SafeCheckpointIO, read_checkpoint
from add_lightning.cli import console_main


@pytest.fixture(scope="module")
def trained(tiny_fit_run) -> dict[str, Path]:
    """The shared one-epoch fit (tests/conftest.py ``tiny_fit_run``): read-only."""
    return tiny_fit_run


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The files that ``torch.load`` reads from now on, as absolute paths (file objects by
    their ``name``), in order."""
    files: list[str] = []
    load = torch.load

    def counted(source, *args, **kwargs):
        name = source if isinstance(source, str | os.PathLike) else getattr(source, "name", None)
        files.append(str(Path(name).resolve()) if name is not None else repr(source))
        return load(source, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    return files


def _last(run: Path) -> Path:
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_an_evaluation_reads_the_checkpoint_once(trained, tmp_path, reads, subcommand):
    checkpoint = _last(trained["run"])
    out = tmp_path / "out"
    argv = [subcommand, "--config", str(trained["config"]), "--ckpt_path", str(checkpoint)]
    assert console_main([*argv, "--trainer.default_root_dir", str(out)]) == 0
    assert reads == [str(checkpoint.resolve())]
    # the config saved for the run names the checkpoint it evaluated
    saved = yaml.safe_load((out / f"config_{subcommand}.yaml").read_text())
    assert saved["ckpt_path"] == str(checkpoint)


@pytest.mark.parametrize("given", ["file", "last"])
def test_a_resumed_fit_reads_the_checkpoint_once(trained, tmp_path, reads, given):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    ckpt_path = str(_last(run)) if given == "file" else "last"
    argv = ["fit", "--config", str(trained["config"]), "--trainer.default_root_dir", str(run)]
    assert console_main([*argv, "--trainer.max_epochs", "2", "--ckpt_path", ckpt_path]) == 0
    assert reads == [str(_last(run).resolve())]
    # resumed, not started again: the second epoch of two was trained
    assert torch.load(_last(run), weights_only=True)["epoch"] == 1


def test_classify_reads_the_checkpoint_once(trained, reads, capsys):
    checkpoint = _last(trained["run"])
    assert console_main(["classify", "--ckpt_path", str(checkpoint), str(trained["clip"])]) == 0
    assert reads == [str(checkpoint.resolve())]
    assert "00_tone" in capsys.readouterr().out


def test_export_reads_the_checkpoint_once(trained, tmp_path, reads):
    checkpoint = _last(trained["run"])
    output = tmp_path / "model.onnx"
    argv = ["export", "--ckpt_path", str(checkpoint), "--format", "onnx", "--output", str(output)]
    assert console_main(argv) == 0
    assert reads == [str(checkpoint.resolve())]
    assert output.is_file()


def _saved_with_step(checkpoint: Path, path: Path, global_step: int) -> None:
    content = torch.load(checkpoint, weights_only=True)
    content["global_step"] = global_step
    torch.save(content, path)


def test_the_restore_takes_the_read_of_the_unchanged_file_once(trained, tmp_path, reads):
    checkpoint = tmp_path / "last.ckpt"
    shutil.copy(_last(trained["run"]), checkpoint)
    read = read_checkpoint(checkpoint)
    plugin = SafeCheckpointIO(read)
    restored = plugin.load_checkpoint(checkpoint)
    assert reads == [str(checkpoint.resolve())]  # read_checkpoint's alone
    assert restored.keys() == read.content.keys()
    # once only: training changes the restored tensors in place; a second load reads the file
    again = plugin.load_checkpoint(checkpoint)
    assert reads == [str(checkpoint.resolve())] * 2
    assert all(torch.equal(again["state_dict"][k], v) for k, v in restored["state_dict"].items())


@pytest.mark.parametrize("how", ["replaced", "rewritten in place"])
def test_the_restore_reads_a_file_changed_since_the_command_read_it(trained, tmp_path, how):
    checkpoint = tmp_path / "last.ckpt"
    shutil.copy(_last(trained["run"]), checkpoint)
    read = read_checkpoint(checkpoint)
    assert read.content["global_step"] != 1000
    if how == "replaced":
        _saved_with_step(checkpoint, tmp_path / "new.ckpt", 1000)
        os.replace(tmp_path / "new.ckpt", checkpoint)
    else:
        _saved_with_step(checkpoint, tmp_path / "new.ckpt", 1000)
        checkpoint.write_bytes((tmp_path / "new.ckpt").read_bytes())  # the same inode
        # a later modification time, also where the file system's clock is coarse
        stat = checkpoint.stat()
        os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert SafeCheckpointIO(read).load_checkpoint(checkpoint)["global_step"] == 1000


def test_the_restore_of_another_file_reads_it(trained, tmp_path):
    checkpoint = _last(trained["run"])
    other = tmp_path / "other.ckpt"
    _saved_with_step(checkpoint, other, 1000)
    read = read_checkpoint(checkpoint)
    assert SafeCheckpointIO(read).load_checkpoint(other)["global_step"] == 1000


def test_a_cv_unit_hands_its_check_of_last_ckpt_to_its_fit(trained, tmp_path, reads):
    from add_lightning.experiments.unit import _resumable_checkpoint

    checkpoint = tmp_path / "last.ckpt"
    shutil.copy(_last(trained["run"]), checkpoint)
    assert _resumable_checkpoint(checkpoint) == checkpoint  # the runner's check before `fit`
    first = read_checkpoint(checkpoint, resume=True)  # the unit's `fit --ckpt_path` in-process
    assert reads == [str(checkpoint.resolve())]
    # handed over once, and only for the unchanged file: the next read reads it
    assert read_checkpoint(checkpoint, resume=True) is not first
    assert reads == [str(checkpoint.resolve())] * 2
    _resumable_checkpoint(checkpoint)
    _saved_with_step(checkpoint, checkpoint, 7)  # rewritten after the check
    assert read_checkpoint(checkpoint).content["global_step"] == 7
