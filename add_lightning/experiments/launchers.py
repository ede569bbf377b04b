"""Launchers of experiment units: subprocesses on this machine, or submitit (SLURM).

Both run the same thing, :func:`add_lightning.experiments.unit.execute_unit`, which trains a
unit under its own lock and resumes it from ``checkpoints/last.ckpt``; they differ in where:

- :class:`LocalBackend`: ``python -m add_lightning.experiments.unit`` subprocesses, up to
  ``max_parallel`` at once, each with its own GPU(s) (``CUDA_VISIBLE_DEVICES``) when GPUs exist,
  else with the CPU threads divided between them. Each unit's output goes to ``RUN/unit.log``.
- :class:`SubmititBackend`: one submitit job per unit (a SLURM job array, or submitit's local
  executor on this machine). A job that SLURM preempts or times out is requeued by submitit
  (:class:`UnitJob` is checkpointable) and resumes from its last checkpoint. Whether a SLURM
  job has ended is read from ``squeue`` (:mod:`~add_lightning.experiments.slurm`), which
  answers on clusters without an accounting database too.

:func:`schedule` drives either: it skips finished units, leaves a unit whose lock another
worker holds until that worker lets go (then it is finished, or is run here), records failures
with their log paths and, without ``keep_going``, starts nothing new after the first failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from submitit.helpers import Checkpointable, DelayedSubmission

from add_lightning.experiments.config import ExperimentConfigError
from add_lightning.experiments.files import EXPERIMENT_FILENAME, LOG_FILENAME, UNIT_BUSY_STATUS
from add_lightning.experiments.locks import lock_is_free
from add_lightning.experiments.progress import Progress
from add_lightning.experiments.slurm import SlurmQueue, log_submitit_once

__all__ = [
    "Failure",
    "LocalBackend",
    "SubmititBackend",
    "Task",
    "UnitJob",
    "preemption_signal",
    "schedule",
    "visible_gpus",
]

log = logging.getLogger(__name__)

_POLL_S = 0.2


@dataclass(frozen=True)
class Task:
    """One unit of one experiment, as a launcher sees it.

    Attributes:
        output: The experiment directory.
        config_hash: The experiment's config hash.
        fold: The unit's fold (None without folds).
        seed: The unit's seed.
        label: How progress lines name it (``fold1_seed0``, ``sweep_member/fold1_seed0``).
    """

    output: Path
    config_hash: str
    fold: int | None
    seed: int
    label: str

    @property
    def run_dir(self) -> Path:
        return self.output / (
            f"seed{self.seed}" if self.fold is None else f"fold{self.fold}_seed{self.seed}"
        )

    @property
    def experiment(self) -> Path:
        return self.output / EXPERIMENT_FILENAME


@dataclass(frozen=True)
class Failure:
    """A unit that did not finish: why, and where its log is."""

    task: Task
    reason: str
    log_path: Path | None


@dataclass(frozen=True)
class Outcome:
    """How a started unit ended: its exit status, or the error that ended its job."""

    status: int | None
    error: str | None = None


class Backend(Protocol):
    """What :func:`schedule` needs of a launcher."""

    capacity: int

    def start(self, tasks: Sequence[Task]) -> list[Any]: ...
    def poll(self, handle: Any) -> Outcome | None: ...
    def log_path(self, handle: Any) -> Path | None: ...
    def where(self, handle: Any) -> str: ...
    def finish(self, handle: Any) -> None: ...
    def stop(self, handle: Any) -> None: ...


def _describe_status(status: int) -> str:
    """``failed (exit status 1)`` or ``was interrupted by signal SIGTERM``."""
    signum = -status if status < 0 else status - 128 if status > 128 else 0
    if signum and signum in signal.valid_signals():
        return f"was interrupted by signal {signal.Signals(signum).name}"
    return f"failed (exit status {status})"


def schedule(
    tasks: Sequence[Task],
    backend: Backend,
    is_finished: Any,
    keep_going: bool = False,
    wait: bool = True,
    progress: Progress | None = None,
) -> list[Failure]:
    """Runs ``tasks`` through ``backend``, ``backend.capacity`` at a time.

    Args:
        tasks: The units, in the order to start them.
        backend: :class:`LocalBackend` or :class:`SubmititBackend`.
        is_finished: ``is_finished(task) -> bool``: whether a unit's result is complete.
        keep_going: Run every unit even after one failed (else start no new one).
        wait: Wait for the units to end (False: start them all and return, for SLURM).
        progress: Where the counts go; a new :class:`Progress` when None.

    Returns:
        The units that failed, each with the reason and its log path. Units held by another
        worker that did not end before ``schedule`` returned are not failures.
    """
    progress = progress or Progress(task.label for task in tasks)
    queue = deque(tasks)
    held: list[Task] = []  # trained by another worker: revisited when its lock is free
    running: dict[int, tuple[Task, Any]] = {}
    failures: list[Failure] = []
    stopping = False
    try:
        while running or ((queue or held) and not stopping):
            startable = []
            while queue and not stopping and len(running) + len(startable) < backend.capacity:
                task = queue.popleft()
                if is_finished(task):
                    progress.finished(task.label, " (earlier)")
                elif not lock_is_free(task.run_dir):
                    progress.requeued(task.label, "held by another worker, waiting for it")
                    held.append(task)
                else:
                    startable.append(task)
            for task, handle in zip(startable, backend.start(startable)):
                running[id(handle)] = (task, handle)
                progress.running(task.label, backend.log_path(handle), backend.where(handle))
            if not wait:
                return failures
            for key, (task, handle) in list(running.items()):
                outcome = backend.poll(handle)
                if outcome is None:
                    continue
                del running[key]
                backend.finish(handle)
                if outcome.status == UNIT_BUSY_STATUS:
                    progress.requeued(task.label, "taken by another worker meanwhile, waiting")
                    held.append(task)
                elif outcome.status == 0 and is_finished(task):
                    progress.finished(task.label)
                else:
                    reason = outcome.error or (
                        _describe_status(outcome.status)
                        if outcome.status
                        else "ended without a complete test_metrics.json"
                    )
                    progress.failed(task.label, reason)
                    failures.append(Failure(task, reason, backend.log_path(handle)))
                    stopping = stopping or not keep_going
            for task in list(held):
                if lock_is_free(task.run_dir):
                    held.remove(task)
                    queue.append(task)  # finished by the other worker, or run here
            progress.heartbeat()
            time.sleep(_POLL_S)
    finally:
        for _, handle in running.values():
            backend.stop(handle)
    return failures


# ------------------------------------------------------------------------------- this machine


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else all of torch's."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        return [item.strip() for item in value.split(",") if item.strip() and item.strip() != "-1"]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class _Process:
    task: Task
    process: subprocess.Popen
    log_path: Path
    gpus: list[str]
    tee: threading.Thread | None


class LocalBackend:
    """Units as subprocesses of this launcher (``python -m add_lightning.experiments.unit``).

    Args:
        max_parallel: How many units run at once.
        gpus_per_unit: GPUs given to each unit through ``CUDA_VISIBLE_DEVICES`` when this
            machine has GPUs; with fewer GPUs than ``max_parallel × gpus_per_unit``, fewer
            units run at once. 0: no GPU (units see none).
        gpus: The GPU ids to share out; None for :func:`visible_gpus`.
        echo: Copy each unit's output to this process's stderr too (one unit at a time).

    Without GPUs, ``max_parallel > 1`` units divide this machine's CPU threads: each gets
    ``cpus // max_parallel`` (``torch.set_num_threads`` and ``OMP_NUM_THREADS``) unless
    ``OMP_NUM_THREADS`` is set already.

    Raises:
        ExperimentConfigError: If ``max_parallel`` < 1, ``gpus_per_unit`` < 0, or a unit
            needs more GPUs than the machine has.
    """

    #: The module each task runs, with a unit's arguments (a search's workers run another).
    module = "add_lightning.experiments.unit"

    def __init__(
        self,
        max_parallel: int = 1,
        gpus_per_unit: int = 1,
        gpus: Sequence[str] | None = None,
        echo: bool | None = None,
    ) -> None:
        if max_parallel < 1:
            raise ExperimentConfigError(
                f"Expected argument `--max-parallel` to be at least 1, got {max_parallel}"
            )
        if gpus_per_unit < 0:
            raise ExperimentConfigError(
                f"Expected argument `--gpus-per-unit` to be 0 or more, got {gpus_per_unit}"
            )
        self.free_gpus = list(visible_gpus() if gpus is None else gpus) if gpus_per_unit else []
        self.gpus_per_unit = gpus_per_unit if self.free_gpus else 0
        self.threads: int | None = None
        if self.gpus_per_unit:
            slots = len(self.free_gpus) // self.gpus_per_unit
            if slots == 0:
                raise ExperimentConfigError(
                    f"Expected at most {len(self.free_gpus)} GPU(s) per unit (the GPUs "
                    f"{','.join(self.free_gpus)} of this machine), got --gpus-per-unit "
                    f"{gpus_per_unit}"
                )
            if slots < max_parallel:
                log.warning(
                    "%d GPU(s), %d per unit: running %d unit(s) at once, not %d",
                    len(self.free_gpus),
                    self.gpus_per_unit,
                    slots,
                    max_parallel,
                )
            self.capacity = min(max_parallel, slots)
        else:
            self.capacity = max_parallel
            if max_parallel > 1 and "OMP_NUM_THREADS" not in os.environ:
                self.threads = max(1, _cpu_count() // max_parallel)
        self.echo = self.capacity == 1 if echo is None else echo

    def _command(self, task: Task) -> list[str]:
        command = [
            sys.executable,
            "-m",
            self.module,
            "--experiment",
            str(task.experiment),
            "--run-dir",
            str(task.run_dir),
            "--seed",
            str(task.seed),
            "--config-hash",
            task.config_hash,
            "--parent-pid",
            str(os.getpid()),
        ]
        if self.threads is not None:
            command += ["--threads", str(self.threads)]
        return command if task.fold is None else [*command, "--fold", str(task.fold)]

    def start(self, tasks: Sequence[Task]) -> list[_Process]:
        return [self._start(task) for task in tasks]

    def _start(self, task: Task) -> _Process:
        env = dict(os.environ)
        gpus: list[str] = []
        if self.gpus_per_unit:
            gpus, self.free_gpus = (
                self.free_gpus[: self.gpus_per_unit],
                self.free_gpus[self.gpus_per_unit :],
            )
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        elif self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        log_path = task.run_dir / LOG_FILENAME
        task.run_dir.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "ab")  # appended: an interrupted unit's earlier attempts stay
        stream.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {task.label}\n".encode())
        stream.flush()
        command = self._command(task)
        if not self.echo:
            with stream:
                process = subprocess.Popen(
                    command, stdout=stream, stderr=subprocess.STDOUT, env=env
                )
            return _Process(task, process, log_path, gpus, None)
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        tee = threading.Thread(target=_tee, args=(process.stdout, stream), daemon=True)
        tee.start()
        return _Process(task, process, log_path, gpus, tee)

    def poll(self, handle: _Process) -> Outcome | None:
        status = handle.process.poll()
        return None if status is None else Outcome(status)

    def log_path(self, handle: _Process) -> Path:
        return handle.log_path

    def where(self, handle: _Process) -> str:
        if handle.gpus:
            return f" on GPU {','.join(handle.gpus)}"
        return f" with {self.threads} thread(s)" if self.threads else ""

    def finish(self, handle: _Process) -> None:
        if handle.tee is not None:
            handle.tee.join()
        self.free_gpus += handle.gpus

    def stop(self, handle: _Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            handle.process.terminate()
        handle.process.wait()
        self.finish(handle)


def _tee(source: Any, log_stream: Any) -> None:
    """Copies a unit's output to its log and to this process's stderr, line by line."""
    with log_stream, source:
        for line in iter(source.readline, b""):
            log_stream.write(line)
            log_stream.flush()
            sys.stderr.write(line.decode("utf-8", errors="replace"))
            sys.stderr.flush()


# ------------------------------------------------------------------------------------ submitit


def preemption_signal() -> int:
    """The signal of submitit's preemption and time-limit handler in a job (SIGUSR2 unless
    ``SUBMITIT_PREEMPT_SIGNAL`` names another)."""
    from submitit import JobEnvironment

    return getattr(signal, f"SIG{JobEnvironment.USR_SIG}")


class UnitJob(Checkpointable):
    """The callable a submitit job runs: one unit, in the job's own process.

    Checkpointable: when SLURM preempts the job or its time runs out, submitit calls
    :meth:`checkpoint` and requeues the same callable; the requeued job resumes the unit from
    ``checkpoints/last.ckpt`` (with its random state), so the result is that of an
    uninterrupted run. Nothing is saved at the signal: a checkpoint from the middle of an
    epoch could not resume that epoch's shuffled order, so a requeue costs at most the epoch
    in progress (``last.ckpt`` is saved at every epoch's end).
    """

    def __init__(self, task: Task, threads: int | None = None) -> None:
        self.task = task
        self.threads = threads

    def __call__(self) -> int:
        from add_lightning.experiments.unit import ExitAtBatchEnd, execute_unit

        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        log_submitit_once()  # its signal handler's lines, once in the job's log
        task = self.task
        # submitit's preemption handler, installed before this call: its exit at a batch end
        exit_at_batch_end = ExitAtBatchEnd(preemption_signal())
        return execute_unit(
            task.experiment,
            task.run_dir,
            task.seed,
            task.config_hash,
            task.fold,
            self.threads,
            [exit_at_batch_end],
        )

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeues the same unit; it resumes from its last checkpoint."""
        log.warning("Unit %s preempted or out of time: requeued", self.task.run_dir)
        return DelayedSubmission(UnitJob(self.task, self.threads))


class SubmititBackend:
    """Units as submitit jobs: SLURM (``cluster="slurm"``) or this machine (``"local"``).

    Args:
        folder: submitit's folder (job scripts, pickles, ``<job id>_0_log.{out,err}``).
        cluster: ``"slurm"``, ``"local"`` (submitit's local executor, the same jobs as
            subprocesses) or ``"debug"`` (in this process, for debugging).
        parameters: ``AutoExecutor.update_parameters`` arguments (``timeout_min``,
            ``slurm_partition``, ``gpus_per_node``, ``slurm_additional_parameters``, ...).
        max_parallel: At most this many units at once: SLURM's job-array parallelism; on this
            machine, jobs are submitted as running ones end.
        max_requeues: How often a unit may be requeued after a preemption or timeout.

    A unit of several processes (``tasks_per_node`` > 1, Lightning's DDP under SLURM) is one
    job of that many tasks; srun stops them all when one fails, rather than leave the others
    waiting for it (``--kill-on-bad-exit``).

    Raises:
        ExperimentConfigError: If submitit rejects a parameter.
    """

    #: The callable of each task's job (a search's workers run another).
    job_class: type[UnitJob] = UnitJob

    def __init__(
        self,
        folder: Path,
        cluster: str = "slurm",
        parameters: dict[str, Any] | None = None,
        max_parallel: int = 1,
        max_requeues: int = 3,
    ) -> None:
        import submitit

        if max_parallel < 1:
            raise ExperimentConfigError(
                f"Expected argument `--max-parallel` to be at least 1, got {max_parallel}"
            )
        parameters = dict(parameters or {})
        self.threads = parameters.pop("threads", None)
        self.cluster = cluster
        try:
            self.executor = submitit.AutoExecutor(
                folder=folder,
                cluster=cluster,
                slurm_max_num_timeout=max_requeues,
                local_max_num_timeout=max_requeues,
            )
        except RuntimeError as error:  # no srun on PATH
            raise ExperimentConfigError(
                f"Expected SLURM's commands (srun, sbatch) on PATH for --launcher slurm ({error}); "
                "run on a login node of the cluster, or use --launcher local"
            ) from None
        log_submitit_once()
        self.queue: SlurmQueue | None = None
        if cluster == "slurm":
            parameters.setdefault("slurm_array_parallelism", max_parallel)
            parameters.setdefault("slurm_srun_args", ["--kill-on-bad-exit=1"])
            self.capacity = sys.maxsize  # SLURM runs max_parallel of the array at once
            self.queue = SlurmQueue()
        else:
            self.capacity = max_parallel
        parameters.setdefault("name", "add-lightning-cv")
        # submitit's own default is 5 minutes on SLURM and 2 on this machine.
        parameters.setdefault("timeout_min", 24 * 60)
        try:
            self.executor.update_parameters(**parameters)
        except (ValueError, NameError, TypeError, AssertionError) as error:
            raise ExperimentConfigError(f"submitit refused the job parameters: {error}") from None

    def start(self, tasks: Sequence[Task]) -> list[Any]:
        if not tasks:
            return []
        jobs = []
        with self.executor.batch():  # one SLURM job array
            for task in tasks:
                jobs.append(self.executor.submit(self.job_class(task, self.threads)))
        if self.queue is not None:
            self.queue.expire()  # an older answer would not list the new jobs
        return jobs

    def poll(self, handle: Any) -> Outcome | None:
        if self.queue is None:
            return _outcome(handle) if handle.done() else None
        # On SLURM not handle.done(): it asks sacct, which a cluster without accounting
        # refuses (a warning at every poll, and a job that died stays "not done").
        first = handle.task(0)  # the unit's first process: its outcome is the unit's
        if _has_results(handle):
            return _outcome(first)
        if not self.queue.ended(handle.job_id):
            return None
        if first.paths.result_pickle.exists():  # the other tasks were stopped with it
            return _outcome(first)
        return Outcome(None, f"ended without a result (SLURM job {handle.job_id})")

    def log_path(self, handle: Any) -> Path:
        return Path(handle.task(0).paths.stderr)

    def where(self, handle: Any) -> str:
        tasks = f" of {handle.num_tasks} tasks" if handle.num_tasks > 1 else ""
        return f" as job {handle.job_id}{tasks}"

    def finish(self, handle: Any) -> None:
        pass

    def stop(self, handle: Any) -> None:
        if self.cluster != "slurm":  # SLURM jobs outlive the launcher (see --no-wait)
            handle.cancel(check=False)


def _outcome(job: Any) -> Outcome:
    """The exit status of a finished submitit job, or its error's last line."""
    exception = job.exception()
    if exception is None:
        return Outcome(int(job.results()[0]))
    message = str(exception).strip().splitlines()
    return Outcome(None, f"job {job.job_id}: {message[-1] if message else exception!r}")


def _has_results(job: Any) -> bool:
    """Whether every task of a submitit job has written its result (or its error)."""
    return all(job.task(index).paths.result_pickle.exists() for index in range(job.num_tasks))
