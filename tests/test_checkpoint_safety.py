"""Checkpoints are data: never executed, each bad file one clear line, never lost to a failed save.

A planted checkpoint (a real one with an object whose unpickling would create a marker file)
must run nothing, in `cv`'s resume as in `test`, `classify` and `export`; files that are not
Lightning checkpoints are refused in one line naming the file; and a save that hits a full disk
(a small tmpfs) keeps the previous `last.ckpt` whole and resumable.
"""

from __future__ import annotations

import errno
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from add_lightning.cli import console_main, main


class Planted:
    """Unpickled, creates ``marker``: what an attacker's object could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _fit(config: Path, run: Path, *extra: str) -> int:
    return main(["fit", "--config", str(config), "--trainer.default_root_dir", str(run), *extra])


@pytest.fixture(scope="module")
def trained(tiny_fit_run) -> dict[str, Path]:
    """The shared one-epoch fit (tests/conftest.py ``tiny_fit_run``): read-only."""
    return tiny_fit_run


def test_the_planted_object_runs_when_unpickled_without_weights_only(tmp_path):
    # the control of the tests below: what a plain pickle load of the file would do
    pickle.loads(pickle.dumps(Planted(tmp_path / "marker")))
    assert (tmp_path / "marker").is_file()


def _plant(checkpoint: Path, path: Path, marker: Path) -> Path:
    """``checkpoint`` with one more entry, a :class:`Planted` object, written to ``path``."""
    content = torch.load(checkpoint, weights_only=True)
    content["planted"] = Planted(marker)
    torch.save(content, path)
    return path


def _bad_checkpoint(kind: str, folder: Path, trained: dict[str, Path]) -> Path:
    path = folder / f"{kind}.ckpt"
    if kind == "planted":
        return _plant(trained["checkpoint"], path, folder / "marker")
    if kind == "zip":  # a zip archive, but not of torch.save
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "not a checkpoint")
    elif kind == "plain-dict":  # weights alone, no Lightning layout
        torch.save({"head.weight": torch.zeros(3, 32)}, path)
    elif kind == "bare-tensor":
        torch.save(torch.zeros(3), path)
    return path


# What each file must be told to be: the requirement, not the code's wording.
EXPECTED = {
    "planted": "holds objects that are not loaded for safety",
    "zip": "is a zip archive but not a PyTorch checkpoint",
    "plain-dict": "is not a Lightning checkpoint",
    "bare-tensor": "holds a Tensor, not a Lightning checkpoint",
}


def _command(name: str, checkpoint: Path, trained: dict[str, Path], out: Path) -> list[str]:
    if name == "test":
        run = ["--config", str(trained["config"]), "--trainer.default_root_dir", str(out)]
        return ["test", *run, "--ckpt_path", str(checkpoint)]
    if name == "classify":
        return ["classify", "--ckpt_path", str(checkpoint), str(trained["clip"])]
    return ["export", "--ckpt_path", str(checkpoint), "--format", "onnx", "--output", str(out)]


@pytest.mark.parametrize("command", ["test", "classify", "export"])
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_a_bad_checkpoint_is_refused_in_one_line(trained, tmp_path, capsys, kind, command):
    checkpoint = _bad_checkpoint(kind, tmp_path, trained)
    status = console_main(_command(command, checkpoint, trained, tmp_path / "out"))
    err = capsys.readouterr().err
    assert status == 1, err
    errors = [line for line in err.splitlines() if line.startswith("add-lightning: error:")]
    assert len(errors) == 1, err
    assert str(checkpoint) in errors[0] and EXPECTED[kind] in errors[0]
    assert "written by `add-lightning fit`" in errors[0]  # what was expected
    assert "Traceback" not in err and "weights_only=False" not in err
    assert not (tmp_path / "marker").exists()  # nothing in the file ran


def test_a_checkpoint_without_training_state_is_not_resumed(trained, tmp_path):
    content = torch.load(trained["checkpoint"], weights_only=True)
    del content["optimizer_states"]  # as ModelCheckpoint(save_weights_only=True) writes
    torch.save(content, tmp_path / "weights.ckpt")
    with pytest.raises(ValueError, match=r"weights\.ckpt.*not the training state"):
        _fit(trained["config"], tmp_path / "run", "--ckpt_path", str(tmp_path / "weights.ckpt"))


def test_weights_only_false_is_refused(trained, tmp_path):
    arguments = _command("test", trained["checkpoint"], trained, tmp_path / "out")
    with pytest.raises(ValueError, match=r"`--weights_only` to be true or left out"):
        main([*arguments, "--weights_only", "false"])


# ------------------------------------------------------------------------------------------ cv


def _cv(config: Path, output: Path) -> int:
    from add_lightning.experiments import cli

    arguments = ["cv", "--config", str(config), "--folds", "1", "--seeds", "0"]
    return cli.main([*arguments, "--output", str(output)])


@pytest.fixture(scope="module")
def finished_cv(trained, tmp_path_factory) -> Path:
    """`add-lightning cv` of one unit (fold 1, seed 0), finished."""
    output = tmp_path_factory.mktemp("cv") / "experiment"
    assert _cv(trained["config"], output) == 0
    return output


def _unfinished_copy(finished_cv: Path, output: Path) -> Path:
    """A copy of the experiment whose unit is unfinished: `cv` resumes it from last.ckpt."""
    shutil.copytree(finished_cv, output)
    (output / "fold1_seed0" / "test_metrics.json").unlink()
    return output / "fold1_seed0" / "checkpoints" / "last.ckpt"


def test_cv_runs_nothing_from_a_planted_checkpoint(trained, finished_cv, tmp_path, capfd):
    output = tmp_path / "experiment"
    last = _unfinished_copy(finished_cv, output)
    real = last.read_bytes()
    _plant(last, last, tmp_path / "marker")
    capfd.readouterr()
    status = _cv(trained["config"], output)
    err = capfd.readouterr().err
    assert not (tmp_path / "marker").exists()
    assert status == 1
    assert f"{last} holds objects that are not loaded for safety" in err
    assert "Unit fold1_seed0 failed" in err and "Resuming" not in err
    assert last.is_file()  # kept for a look, not deleted
    # The unit's own checkpoint is resumed (with weights_only=True) and the unit finishes.
    last.write_bytes(real)
    assert _cv(trained["config"], output) == 0
    assert "Resuming fold1_seed0 from" in capfd.readouterr().err
    assert (output / "fold1_seed0" / "test_metrics.json").is_file()


def test_cv_keeps_a_damaged_checkpoint_aside_and_trains_again(
    trained, finished_cv, tmp_path, capfd
):
    output = tmp_path / "experiment"
    last = _unfinished_copy(finished_cv, output)
    damaged = last.read_bytes()[: last.stat().st_size // 2]  # cut short
    last.write_bytes(damaged)
    capfd.readouterr()
    assert _cv(trained["config"], output) == 0
    err = capfd.readouterr().err
    aside = last.with_name("last.ckpt.damaged")
    assert aside.read_bytes() == damaged
    assert f"Moved it to {aside}; training this unit from the start" in err
    assert "Resuming" not in err
    assert (output / "fold1_seed0" / "test_metrics.json").is_file()
    assert torch.load(last, weights_only=True)["epoch"] == 0  # trained again: one epoch


# ------------------------------------------------------------------------------- full disk


@pytest.fixture
def small_tmpfs(tmp_path) -> Path:
    """A 4 MiB tmpfs: another file system than the temporary folder, and easy to fill."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command to mount a tmpfs")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _killed_save(path: Path) -> None:
    """What a process killed while it writes ``path`` atomically leaves: its temporary file."""
    code = (
        "import os, signal, sys\n"
        "from add_lightning.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as temporary:\n"
        "    temporary.write_bytes(b'part of a checkpoint')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=False)


def test_every_save_replaces_last_ckpt_by_a_rename(trained, small_tmpfs):
    run = small_tmpfs / "run"
    last = run / "checkpoints" / "last.ckpt"
    assert _fit(trained["config"], run) == 0
    first = last.stat().st_ino
    _killed_save(last)
    assert len(list(last.parent.iterdir())) == 2
    assert _fit(trained["config"], run, "--trainer.max_epochs", "2", "--ckpt_path", "last") == 0
    assert last.stat().st_ino != first  # a new file renamed over it, not rewritten in place
    assert [path.name for path in last.parent.iterdir()] == ["last.ckpt"]  # killed save's removed


def _fill(path: Path) -> None:
    """Writes ``path`` until its file system has no byte left."""
    with open(path, "wb", buffering=0) as stream:
        for size in (1 << 16, 1 << 12, 1):
            with pytest.raises(OSError) as info:
                while True:
                    stream.write(b"\0" * size)
            assert info.value.errno == errno.ENOSPC


def test_a_save_on_a_full_disk_keeps_the_previous_checkpoint(trained, small_tmpfs, tmp_path):
    config = trained["config"]
    # The checkpoints on the tmpfs, the run's other files (config, TensorBoard) beside it.
    run = ["--trainer.default_root_dir", str(tmp_path / "run")]
    run += ["--last_checkpoint.dirpath", str(small_tmpfs)]
    last = small_tmpfs / "last.ckpt"
    assert main(["fit", "--config", str(config), *run]) == 0
    kept = last.read_bytes()

    # A wider model trained again in the same folder on a full disk: its checkpoint is larger
    # than the previous one, and there is no room for it.
    _fill(small_tmpfs / "filler")
    wider = ["--model.init_args.backbone.init_args.intermediate_size", "400"]
    with pytest.raises(OSError) as info:
        main(["fit", "--config", str(config), *run, *wider])
    assert last.read_bytes() == kept
    assert info.value.errno == errno.ENOSPC and str(last) in str(info.value)
    assert sorted(path.name for path in small_tmpfs.iterdir()) == ["filler", "last.ckpt"]

    (small_tmpfs / "filler").unlink()  # the previous checkpoint resumes
    resume = ["--trainer.max_epochs", "2", "--ckpt_path", "last"]
    assert main(["fit", "--config", str(config), *run, *resume]) == 0
    assert torch.load(last, weights_only=True)["epoch"] == 1
