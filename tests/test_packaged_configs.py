"""The configs ship inside the package: `--config NAME` from any folder, and `add-lightning
configs` copies them for editing; the wheel carries every file of configs/ and the LICENSE."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from config_files import resolved
from console_runs import REPO, run_console

from add_lightning.cli import console_main, main
from add_lightning.packaged_configs import resolve_config, resolve_config_arguments

CONFIGS = REPO / "configs"
REPO_FILES = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*") if p.is_file())


@pytest.fixture
def empty_folder(tmp_path, monkeypatch):
    """The current folder is an empty one, as after `pip install` anywhere but the clone."""
    folder = tmp_path / "empty"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.mark.parametrize(
    ("value", "repo_file"),
    [
        ("quickstart", "quickstart.yaml"),
        ("quickstart.yaml", "quickstart.yaml"),
        ("configs/quickstart.yaml", "quickstart.yaml"),
        ("model/ast_tiny.yaml", "model/ast_tiny.yaml"),
        ("model/ast_tiny", "model/ast_tiny.yaml"),
        ("configs/loss/ablation/add_0001", "loss/ablation/add_0001.yaml"),
    ],
)
def test_a_name_is_the_packaged_config(empty_folder, value, repo_file):
    assert Path(resolve_config(value)).samefile(CONFIGS / repo_file)


def test_a_file_wins_over_the_packaged_config(empty_folder):
    (empty_folder / "configs").mkdir()
    (empty_folder / "configs/quickstart.yaml").write_text("trainer: {max_epochs: 1}\n")
    (empty_folder / "quickstart").mkdir()  # a folder is no config file: the name still counts
    assert resolve_config("configs/quickstart.yaml") == "configs/quickstart.yaml"
    assert Path(resolve_config("quickstart")).samefile(CONFIGS / "quickstart.yaml")


def test_every_form_of_the_config_option_is_resolved(empty_folder):
    arguments = ["fit", "--config", "quickstart", "-c", "model/ast_tiny", "--config=loss/add"]
    arguments += ["--trainer.max_epochs", "1", "--config", "{trainer: {devices: 1}}"]
    resolved_arguments = resolve_config_arguments(arguments)
    assert Path(resolved_arguments[2]).samefile(CONFIGS / "quickstart.yaml")
    assert Path(resolved_arguments[4]).samefile(CONFIGS / "model/ast_tiny.yaml")
    assert resolved_arguments[5].startswith("--config=")
    assert Path(resolved_arguments[5].removeprefix("--config=")).samefile(CONFIGS / "loss/add.yaml")
    # everything else, YAML text given to --config included, is passed on as it is
    kept = [0, 1, 3, 6, 7, 8, 9]
    assert [resolved_arguments[i] for i in kept] == [arguments[i] for i in kept]


def test_an_unknown_name_is_one_line_with_close_names(empty_folder, capsys):
    assert console_main(["fit", "--config", "quickstrat"]) == 1
    error = capsys.readouterr().err.splitlines()[0]
    assert error.startswith("add-lightning: error: ")
    assert "'quickstrat'" in error and "close names: quickstart;" in error


def test_packaged_configs_compose_with_each_other_and_with_a_users_file(empty_folder, capsys):
    # add_0001 includes ../add.yaml (relative to itself, inside the package); mine.yaml is the
    # user's own file, read from the current folder.
    Path("mine.yaml").write_text("trainer: {max_epochs: 3}\n")
    configs = ["quickstart", "loss/ablation/add_0001", "mine.yaml"]
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *(a for c in configs for a in ("--config", c)), "--print_config"])
    assert exit_.value.code in (None, 0)
    config = yaml.safe_load(capsys.readouterr().out)

    expected = resolved(CONFIGS / "loss/ablation/add_0001.yaml")["model"]["init_args"]["loss"]
    embedding = expected["init_args"]["embedding"]["init_args"]
    assert embedding["lambda_mu"] == 1.0  # from add.yaml, the included file
    loss = config["model"]["init_args"]["loss"]
    assert loss["init_args"]["embedding"]["init_args"].items() >= embedding.items()
    backbone = resolved(CONFIGS / "quickstart.yaml")["model"]["init_args"]["backbone"]
    assert (
        config["model"]["init_args"]["backbone"]["init_args"]["hidden_size"]
        == (backbone["init_args"]["hidden_size"])
    )
    assert config["trainer"]["max_epochs"] == 3


def test_configs_command_copies_without_overwriting(tmp_path):
    destination = tmp_path / "my_configs"
    result = run_console(["configs", str(destination)], timeout=60)
    copied = sorted(p.relative_to(destination).as_posix() for p in destination.rglob("*"))
    copied_files = [name for name in copied if (destination / name).is_file()]
    assert copied_files == REPO_FILES
    assert all(filecmp.cmp(destination / n, CONFIGS / n, shallow=False) for n in REPO_FILES)
    assert result.stdout.count("wrote ") == len(REPO_FILES)
    assert f"wrote {destination / 'quickstart.yaml'}\n" in result.stdout

    edited = destination / "quickstart.yaml"
    edited.write_text("trainer: {max_epochs: 1}\n")
    result = run_console(["configs", str(destination)], timeout=60)
    assert edited.read_text() == "trainer: {max_epochs: 1}\n"
    assert result.stdout.count("wrote ") == 0
    assert f"kept {len(REPO_FILES)} existing file(s)" in result.stdout

    result = run_console(["configs", str(destination), "--force"], timeout=60)
    assert filecmp.cmp(edited, CONFIGS / "quickstart.yaml", shallow=False)
    assert result.stdout.count("wrote ") == len(REPO_FILES)

    listed = run_console(["configs", "--list"], timeout=60).stdout.split()
    assert listed == sorted(name.removesuffix(".yaml") for name in REPO_FILES)


def test_the_wheel_holds_every_config_and_the_license(tmp_path):
    # Built from a copy of the sources: an in-tree build would write build/ in the repository.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("add_lightning", "configs"):
        shutil.copytree(
            REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    build = subprocess.run(
        [*command, "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    assert build.returncode == 0, build.stderr[-4000:]
    (wheel,) = wheels.glob("add_lightning-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        packaged = sorted(
            n.removeprefix("add_lightning/configs/")
            for n in names
            if n.startswith("add_lightning/configs/")
        )
        assert packaged == REPO_FILES
        for name in REPO_FILES:
            assert archive.read(f"add_lightning/configs/{name}") == (CONFIGS / name).read_bytes()
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(license_file) == (REPO / "LICENSE").read_bytes()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        assert "License-Expression: MIT" in archive.read(metadata).decode().splitlines()
