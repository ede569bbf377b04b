"""A function run on several gloo ranks in spawned processes: distributed code tested on CPU.

``run_ranks(fn, args)`` starts ``world_size`` processes (``torch.multiprocessing.spawn``). Each
joins a gloo process group (file rendezvous in a fresh temporary folder), calls
``fn(rank, world_size, *args)``, waits at a barrier until every rank is done, destroys the group
and leaves with ``os._exit(0)``, past the interpreter's finalisation.

Why ``os._exit``: a rank that left through the interpreter's normal exit, even after
``barrier`` and ``destroy_process_group``, died now and then with "terminate called without an
active exception" (SIGABRT), the CI failure of these tests. A core dump of one (2 of 47 runs of
the old worker on a loaded machine) shows why: the ``barrier`` returns as soon as its work is
done, but a gloo worker thread (``ProcessGroupGloo::runLoop``, still running after
``destroy_process_group``: DDP's reducer still holds the group) releases that work afterwards.
The work's saved thread-local state holds a Python object, so the thread takes the GIL, while
the main thread is already in ``Py_FinalizeEx``. CPython ends such a thread with
``pthread_exit``, whose unwinding through that C++ destructor (``noexcept``) calls
``std::terminate``. ``os._exit`` skips finalisation; a rank has nothing left to flush.

Nothing is retried: an exception in ``fn`` fails the test with the rank's traceback; a rank
killed by a signal, or ranks still running after ``timeout`` (then sent SIGABRT), fail it with
the Python stacks that faulthandler wrote for every thread of every rank (of the rank that
died, and of the others at the SIGTERM that spawn then sends them).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp
from console_runs import faulthandler_stacks

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
            try:
                fn(rank, world_size, *args)
            except BaseException:
                # the test's own failure: the other ranks then fail too, at the barrier
                Path(folder, f"error{rank}.txt").write_text(traceback.format_exc())
                raise
            dist.barrier()  # every rank finished before any tears its connections down
        finally:
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        stacks.flush()
        os._exit(0)


def _stacks(folder: str) -> str:
    texts = [
        f"--- rank {path.stem.removeprefix('stacks')}:\n{path.read_text()}"
        for path in sorted(Path(folder).glob("stacks*.txt"))
    ]
    return faulthandler_stacks("\n".join(texts))


def _join(context: mp.ProcessContext, timeout: float) -> bool:
    """Joins the ranks; whether they ran past ``timeout`` (then each got SIGABRT: stacks)."""
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):  # raises when a rank failed
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    os.kill(process.pid, signal.SIGABRT)  # faulthandler writes its stacks
            try:
                context.join()
            except mp.ProcessExitedException:
                pass
            return True
    return False


def run_ranks(
    fn: Callable[..., None], args: Sequence = (), world_size: int = 2, timeout: float = 180
) -> None:
    """Runs ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks (see the module doc).

    ``fn`` must be a module-level function (the spawned processes import it) and ``args``
    picklable; results go to files, and assertions inside ``fn`` fail the test. Ranks still
    running after ``timeout`` seconds count as hung: they are killed (with their stacks) and
    the test fails, as it does when a rank is killed by a signal.
    """
    with tempfile.TemporaryDirectory(prefix="gloo_ranks_") as folder:
        try:
            context = mp.spawn(
                _rank_main,
                args=(world_size, folder, fn, tuple(args)),
                nprocs=world_size,
                join=False,
            )
            if not _join(context, timeout):
                return
            failure = f"the ranks hung for {timeout} s"
        except mp.ProcessExitedException as error:  # killed by a signal, not an exception
            failure = str(error)
        except mp.ProcessRaisedException as error:
            raised = [path.read_text() for path in sorted(Path(folder).glob("error*.txt"))]
            raise AssertionError("\n".join(raised) or str(error)) from None
        raise AssertionError(f"{failure}; the stacks of each rank:\n{_stacks(folder)}")
