"""Atomic file writes: a reader sees the old file or the complete new one, never a truncated one.

The content goes to a temporary file in the target's directory (same file system), is flushed
to disk, and replaces the target with :func:`os.replace`, which is atomic on POSIX and Windows.
An interruption (even ``kill -9``) leaves at most a stray ``.<name>.*.tmp`` file, which no
reader trusts. :func:`atomic_directory` does the same for a whole folder.

The one home of this pattern in the package; it imports nothing from the package, so that any
layer (data, models, export, experiments) can use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_directory", "atomic_path", "write_json_atomic", "write_text_atomic"]


def _temporary_name(path: Path, suffix: str = "") -> Path:
    # Not mkstemp/mkdtemp: their 0600/0700 modes would outlive os.replace; the writer creates
    # the file (umask applies), the unique name keeps concurrent writers apart.
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path next to ``path``; on success it replaces ``path``.

    For writers that insist on a file name (``savefig``, ``np.savez``). ``suffix`` is appended
    to the temporary name so that such writers do not add their own extension. On an exception
    the temporary file is removed and ``path`` is left untouched. The caller creates the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path, suffix)
    try:
        yield tmp
        with open(tmp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str], is_complete: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Yields a new empty folder next to ``path``; on success it is renamed to ``path``.

    ``path`` must not exist, or be an empty folder (POSIX replaces that). When the rename fails
    because another process wrote ``path`` meanwhile and ``is_complete(path)`` says its copy is
    whole, that copy is kept and the temporary folder dropped. On an exception the temporary
    folder is removed and ``path`` is left untouched.

    Raises:
        OSError: If the rename fails and ``path`` is not a complete copy.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError:
            if is_complete is None or not is_complete(path):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_atomic(path: str | os.PathLike[str], write: Callable[[Any], None], mode: str) -> None:
    with atomic_path(path) as tmp, open(tmp, mode, encoding="utf-8") as stream:
        write(stream)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    _write_atomic(path, lambda stream: stream.write(text), "w")


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Writes ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
