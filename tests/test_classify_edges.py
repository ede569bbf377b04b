"""classify with untidy folders and file names: links that lead nowhere, names that forge lines."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from tiny_runs import synthetic_dataset, tiny_run_config

from add_lightning.cli import console_main, main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The last checkpoint of one tiny `add-lightning fit` run (3 synthetic classes)."""
    folder = tmp_path_factory.mktemp("trained")
    config = folder / "config.yaml"
    config.write_text(tiny_run_config(synthetic_dataset(folder / "synthetic")))
    run = folder / "run"
    assert main(["fit", "--config", str(config), "--trainer.default_root_dir", str(run)]) == 0
    return run / "checkpoints" / "last.ckpt"


def _tone(path: Path) -> Path:
    samples = np.sin(2 * np.pi * 440 * np.arange(4800) / 16000).astype(np.float32)
    soundfile.write(path, samples, 16000)
    return path


def _classify(checkpoint: Path, *inputs: Path, output: Path | None = None) -> int:
    extra = [] if output is None else ["--output", str(output)]
    return console_main(["classify", "--ckpt_path", str(checkpoint), *map(str, inputs), *extra])


@pytest.mark.parametrize("entry", ["dangling_link", "link_loop", "pipe"])
def test_an_entry_that_is_no_file_is_reported_as_unreadable(checkpoint, tmp_path, capsys, entry):
    folder = tmp_path / "clips"
    folder.mkdir()
    _tone(folder / "a.wav")
    bad = folder / "b.wav"
    if entry == "pipe":
        os.mkfifo(bad)
    else:
        bad.symlink_to(folder / "missing.wav" if entry == "dangling_link" else bad)
    assert _classify(checkpoint, folder, output=tmp_path / "results.csv") == 1
    captured = capsys.readouterr()
    assert f"skipped: Audio file {bad} does not exist" in captured.err
    assert "classified 1 of 2 files; 1 could not be read" in captured.err
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [str(folder / "a.wav")]
    with (tmp_path / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["path"] for row in rows] == [str(folder / "a.wav"), str(bad)]
    assert rows[0]["error"] == "" and "does not exist" in rows[1]["error"]


@pytest.mark.skipif(sys.platform == "win32", reason="tabs and newlines in POSIX file names")
def test_file_names_with_control_characters_cannot_forge_stdout_lines(checkpoint, tmp_path, capsys):
    names = ["plain name é.wav", "tab\tforged 0.9999.wav", "new\nline.wav", "back\\slash.wav"]
    paths = [_tone(tmp_path / name) for name in names]
    assert _classify(checkpoint, *paths, output=tmp_path / "results.csv") == 0
    lines = capsys.readouterr().out.splitlines()
    # one line per file; the escaped name is the first field, then the 3 labels
    assert len(lines) == len(names)
    expected = [
        "plain name é.wav",
        "tab\\tforged 0.9999.wav",
        "new\\nline.wav",
        "back\\\\slash.wav",
    ]
    for line, name in zip(lines, expected):
        fields = line.split("\t")
        assert fields[0] == os.path.join(str(tmp_path), name)
        assert len(fields) == 1 + 3
    # the CSV keeps the names as they are (its quoting holds tabs and newlines)
    with (tmp_path / "results.csv").open(newline="") as handle:
        assert [row["path"] for row in csv.DictReader(handle)] == list(map(str, paths))
