"""add_lightning.atomic: the package's one home for write-then-rename."""

from __future__ import annotations

import os
import stat

import pytest

from add_lightning.atomic import atomic_directory, atomic_path, write_text_atomic


def test_atomic_directory_renames_the_finished_folder(tmp_path):
    target = tmp_path / "sub" / "data"
    with atomic_directory(target) as temporary:
        assert temporary.parent == target.parent and temporary.is_dir() and not target.exists()
        (temporary / "a.txt").write_text("a")
    assert (target / "a.txt").read_text() == "a"
    assert sorted(p.name for p in target.parent.iterdir()) == ["data"]  # nothing left beside it
    # created as os.mkdir does (umask), not with mkdtemp's 0700
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask


def test_atomic_directory_leaves_nothing_on_an_error(tmp_path):
    target = tmp_path / "data"
    with pytest.raises(RuntimeError, match="stop"), atomic_directory(target) as temporary:
        (temporary / "half").write_text("x")
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_keeps_a_complete_copy_written_meanwhile(tmp_path):
    target = tmp_path / "data"
    with atomic_directory(target, is_complete=lambda p: (p / "done").is_file()) as temporary:
        (temporary / "mine").write_text("mine")
        target.mkdir()  # another process finished first
        (target / "done").write_text("theirs")
    assert sorted(p.name for p in target.iterdir()) == ["done"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_atomic_directory_refuses_an_incomplete_target(tmp_path):
    target = tmp_path / "data"
    with pytest.raises(OSError), atomic_directory(target) as temporary:
        (temporary / "mine").write_text("mine")
        target.mkdir()
        (target / "partial").write_text("?")
    assert sorted(p.name for p in target.iterdir()) == ["partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "x.txt"
    write_text_atomic(target, "old")
    with pytest.raises(ValueError), atomic_path(target) as temporary:
        temporary.write_text("new, half")
        raise ValueError
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]
