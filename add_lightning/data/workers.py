"""How DataLoader workers start: forked, except in a process of a distributed run.

A forked child inherits only the forking thread, and CPython's after-fork code takes locks that
the process group's C++ threads (gloo's ``pt_gloo_runloop``, which hold Python thread states)
may hold at that moment: 2 of about 300 two-process CPU runs left a worker hanging there for
ever. Under an initialized process group the workers therefore start from a fork server: a new
program (fork + exec, no Python code between them) that imports torch and this package once,
then forks each worker from itself, a process without those threads. A worker receives its
dataset pickled (the feature cache reopens its memmap; a shared-memory tensor, such as a clip
dataset's epoch counter, stays shared).
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

import torch

__all__ = ["WORKER_MODULES", "worker_context"]

#: What a worker needs to unpickle its dataset, imported once by the fork server (not Lightning:
#: ``add_lightning.data`` imports its data modules on first use).
WORKER_MODULES = ("torch", "add_lightning.data.clip_dataset")


def worker_context(num_workers: int) -> BaseContext | None:
    """The ``multiprocessing_context`` of a DataLoader with ``num_workers`` workers: None
    without workers (torch refuses a context then) or outside a distributed run (torch's
    default, fork on Linux), else the fork server's."""
    if num_workers == 0 or not (
        torch.distributed.is_available() and torch.distributed.is_initialized()
    ):
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_MODULES))
    return context
