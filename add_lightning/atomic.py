"""Atomic file writes: a reader sees the old file or the complete new one, never a truncated one.

The content goes to a temporary file in the target's directory (same file system), is flushed
to disk, and replaces the target with :func:`os.replace`, which is atomic on POSIX and Windows.
An interruption (even ``kill -9``) leaves at most a stray ``.<name>.<pid>@<host>.*.tmp`` file,
which no reader trusts and :func:`remove_stale_temporary_files` removes once its process is gone.
:func:`atomic_directory` does the same for a whole folder.

The one home of this pattern in the package; it imports nothing from the package, so that any
layer (data, models, export, experiments) can use it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_directory",
    "atomic_path",
    "remove_stale_temporary_files",
    "write_json_atomic",
    "write_text_atomic",
]

log = logging.getLogger(__name__)

# The host's first name label, in characters that cannot be confused with the name's dots: a
# pid means something only on the host (pid namespace) that wrote it, and folders are shared
# between the hosts of a cluster.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:32]
# `.<name>.<pid>@<host>.<8 hex>.tmp<suffix>`; older versions wrote no `@<host>`.
_TEMPORARY = re.compile(r"\..+\.(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9-]*))?\.[0-9a-f]{8}\.tmp.*")
# A file without a host is removed only when nothing wrote to it for this long: a live writer on
# another host would keep changing it.
_HOSTLESS_MIN_AGE_S = 3600.0


def _temporary_name(path: Path, suffix: str = "") -> Path:
    # Not mkstemp/mkdtemp: their 0600/0700 modes would outlive os.replace; the writer creates
    # the file (umask applies), the unique name keeps concurrent writers apart.
    token = secrets.token_hex(4)
    return path.with_name(f".{path.name}.{os.getpid()}@{_HOST}.{token}.tmp{suffix}")


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


def remove_stale_temporary_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Removes the temporary files and folders in ``folder`` whose writer no longer runs.

    A writer killed by a signal, a full disk (SIGBUS of a memory map) or a power cut leaves its
    temporary file behind. One written on this host is removed when its process id is not
    running; one written on another host (a shared file system) is kept, since its process
    cannot be seen from here. Names without a host, from older versions, are removed when their
    process is not running here and nothing wrote to them for an hour. Does nothing where
    ``os.kill(pid, 0)`` cannot test a process (Windows, where it would send CTRL_C_EVENT).

    Returns:
        The paths removed.
    """
    if os.name != "posix":
        return []
    removed = []
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _TEMPORARY.fullmatch(entry.name)
            if match is None or match["host"] not in (_HOST, None):
                continue
            try:
                idle_s = time.time() - entry.stat(follow_symlinks=False).st_mtime
                if _is_running(int(match["pid"])) or (
                    match["host"] is None and idle_s < _HOSTLESS_MIN_AGE_S
                ):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            log.info(
                "Removed %s, left by process %s that no longer runs.", entry.path, match["pid"]
            )
            removed.append(Path(entry.path))
    return removed


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
