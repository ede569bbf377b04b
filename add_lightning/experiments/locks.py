"""File locks of an experiment: one on the directory, one per unit.

- ``DIR/.lock`` is held *shared* by every launcher working in ``DIR`` (several launchers, on one
  machine or on the nodes of a cluster, may share an experiment) and *exclusively* while a
  launcher writes ``experiment.yaml`` for the first time or replaces it (``--force``).
- ``DIR/<unit>/.lock`` is held exclusively by the one process that trains the unit, for as long
  as it runs: a unit is never trained by two workers at once.

The locks are ``flock(2)`` locks: the kernel releases them when their holder dies, even by
``kill -9``, so a crash never leaves a stale lock behind. On a shared file system they need a
file system that supports ``flock`` (NFSv4, Lustre, GPFS do).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from add_lightning.experiments.files import LOCK_FILENAME

__all__ = [
    "LOCK_FILENAME",
    "LockBusyError",
    "clear_besides_lock",
    "downgrade",
    "files_besides_lock",
    "hold_lock",
    "lock_is_free",
]


class LockBusyError(RuntimeError):
    """Another process holds the lock."""


def _flock(handle: IO[str], exclusive: bool) -> bool:
    """Takes the lock without waiting; False when another process holds it."""
    import fcntl

    try:
        fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def hold_lock(
    directory: str | os.PathLike[str], exclusive: bool = True, wait_s: float = 0.0
) -> Iterator[IO[str]]:
    """Holds ``directory/.lock`` (exclusive or shared) for the ``with`` block.

    Args:
        directory: Where the lock file lives (created if missing).
        exclusive: An exclusive lock (one holder) or a shared one (any number of holders, but
            no exclusive one).
        wait_s: How long to retry before giving up (a launcher preparing the directory holds
            it exclusively for a moment).

    Yields:
        The open lock file; :func:`downgrade` turns an exclusive lock into a shared one.

    Raises:
        LockBusyError: If another process holds the lock in a conflicting mode.
    """
    path = Path(directory) / LOCK_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = time.monotonic() + wait_s
        while not _flock(handle, exclusive):
            if time.monotonic() >= deadline:
                raise LockBusyError(f"Another process holds {path}")
            time.sleep(0.1)
        yield handle


def downgrade(handle: IO[str]) -> None:
    """Turns an exclusive lock taken by :func:`hold_lock` into a shared one."""
    import fcntl

    fcntl.flock(handle, fcntl.LOCK_SH)


def lock_is_free(directory: str | os.PathLike[str]) -> bool:
    """Whether nobody holds ``directory/.lock`` right now (a hint: it may be taken just after).

    Does not create the directory.
    """
    path = Path(directory) / LOCK_FILENAME
    if not path.is_file():
        return True
    with open(path, "a") as handle:
        return _flock(handle, exclusive=True)  # released when the file closes


def files_besides_lock(directory: str | os.PathLike[str]) -> list[Path]:
    """What ``directory`` holds besides its lock file (nothing when it does not exist)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return [path for path in directory.iterdir() if path.name != LOCK_FILENAME]


def clear_besides_lock(directory: str | os.PathLike[str]) -> None:
    """Removes everything in ``directory`` but its lock file, which a holder may have open."""
    for path in files_besides_lock(directory):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
