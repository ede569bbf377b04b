"""A function run on several gloo ranks in spawned processes: distributed code tested on CPU.

``run_ranks(fn, args)`` starts ``world_size`` processes (``torch.multiprocessing.spawn``). Each
joins a gloo process group (file rendezvous in a fresh temporary folder), calls
``fn(rank, world_size, *args)``, waits at a barrier until every rank is done, destroys the group
and leaves with ``os._exit(0)``. The last step skips the interpreter's finalisation, where
gloo's threads and the objects they still hold are torn down in no defined order: on the CI
machine a finished rank died there once in a while with "terminate called without an active
exception" (SIGABRT) after its results were complete.

An exception in ``fn`` fails the test with the rank's traceback and is never retried. A rank
killed by a signal (the crash above, in whatever phase) is reported as a pytest warning with
the Python stacks that faulthandler wrote for every thread of every rank (of the rank that
died, and of the others at the SIGTERM that spawn then sends them), and the ranks are
started once more; a second death fails the test with those stacks.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["run_ranks"]


def _rank_main(
    rank: int, world_size: int, folder: str, fn: Callable[..., None], args: Sequence
) -> None:
    with open(os.path.join(folder, f"stacks{rank}.txt"), "w") as stacks:
        faulthandler.enable(file=stacks, all_threads=True)
        # spawn ends the other ranks with SIGTERM when one dies: their stacks say where they were
        faulthandler.register(signal.SIGTERM, file=stacks, all_threads=True, chain=True)
        dist.init_process_group(
            "gloo",
            init_method=f"file://{os.path.join(folder, 'rendezvous')}",
            rank=rank,
            world_size=world_size,
        )
        try:
            fn(rank, world_size, *args)
            dist.barrier()  # every rank finished before any tears its connections down
        finally:
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        stacks.flush()
        os._exit(0)


def _stacks(folder: str) -> str:
    texts = []
    for path in sorted(Path(folder).glob("stacks*.txt")):
        # faulthandler also lists the loaded extension modules: noise here
        lines = [line for line in path.read_text().splitlines() if "Extension modules" not in line]
        texts.append(f"--- rank {path.stem.removeprefix('stacks')}:\n" + "\n".join(lines))
    return "\n".join(texts)[-20000:]


def run_ranks(
    fn: Callable[..., None], args: Sequence = (), world_size: int = 2, retries: int = 1
) -> None:
    """Runs ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks (see the module doc).

    ``fn`` must be a module-level function (the spawned processes import it) and ``args``
    picklable; results go to files, and assertions inside ``fn`` fail the test.
    """
    for attempt in range(retries + 1):
        with tempfile.TemporaryDirectory(prefix="gloo_ranks_") as folder:
            try:
                mp.spawn(
                    _rank_main,
                    args=(world_size, folder, fn, tuple(args)),
                    nprocs=world_size,
                    join=True,
                )
                return
            except mp.ProcessExitedException as error:  # killed by a signal, not an exception
                report = f"{error}; the stacks of each rank:\n{_stacks(folder)}"
        if attempt < retries:
            warnings.warn(f"{report}\n(started once more)", stacklevel=2)
        else:
            raise AssertionError(report)
