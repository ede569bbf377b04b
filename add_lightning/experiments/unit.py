"""One unit of an experiment (one fold, one seed) in its own process: fit, test, predict.

Run by :func:`add_lightning.experiments.runner.run_cv` as
``python -m add_lightning.experiments.unit --experiment DIR/experiment.yaml --run-dir RUN
--seed S [--fold K] --config-hash H``. It resumes from ``RUN/checkpoints/last.ckpt`` when a
readable one exists (read as data, see :func:`_resumable_checkpoint`), tests the final weights
(the paper trains a fixed number of epochs and has no model selection on the test fold), exports
the test embeddings and writes ``RUN/test_metrics.json`` last, atomically: its presence marks
the unit as finished.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import random
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from lightning.pytorch import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from add_lightning.atomic import write_json_atomic
from add_lightning.checkpoint import (
    CheckpointError,
    DamagedCheckpointError,
    hand_over,
    read_checkpoint,
)
from add_lightning.experiments.aggregate import unit_is_finished
from add_lightning.experiments.config import experiment_cli_class
from add_lightning.experiments.files import (
    EMBEDDINGS_FILENAME,
    METRICS_FILENAME,
    UNIT_BUSY_STATUS,
)

__all__ = [
    "UNIT_BUSY_STATUS",
    "ExitAtBatchEnd",
    "RNGStateCheckpoint",
    "execute_unit",
    "main",
    "run_unit",
    "unit_arguments",
]

log = logging.getLogger(__name__)


class RNGStateCheckpoint(Callback):
    """Stores the global RNG states (Python, NumPy, torch, CUDA) in checkpoints and restores them.

    Lightning checkpoints do not hold the random state, so a run resumed from ``last.ckpt``
    would shuffle, augment and drop out differently from an uninterrupted one. With this
    callback a resumed run continues the uninterrupted run's random stream, and the same seeds
    give the same results however often a unit was interrupted. Values are tensors and plain
    Python types, so the checkpoint still loads with ``weights_only=True``.
    """

    def state_dict(self) -> dict[str, Any]:
        version, python_state, gauss = random.getstate()
        kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()  # noqa: NPY002 - the global state is what is resumed
        state: dict[str, Any] = {
            "python": [version, list(python_state), gauss],
            "numpy": [
                kind,
                torch.from_numpy(keys.astype(np.int64)),
                position,
                has_gauss,
                cached_gaussian,
            ],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version, python_state, gauss = state_dict["python"]
        random.setstate((version, tuple(python_state), gauss))
        kind, keys, position, has_gauss, cached_gaussian = state_dict["numpy"]
        np.random.set_state(  # noqa: NPY002
            (kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian)
        )
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class ExitAtBatchEnd(Callback):
    """Raises the ``SystemExit`` of ``signum``'s handler at the next batch end, not where the
    signal lands.

    submitit's preemption handler (SIGUSR2 before a SLURM time limit or preemption) requeues
    the job and then raises ``SystemExit`` in whatever the main thread is running. Raised
    inside another library's critical section it leaves that library broken: in
    ``queue.Queue.put`` of TensorBoard's event writer it loses the writer thread's wake-up, and
    the job's exit then waits for the writer's next timed flush, up to 120 s. With this
    callback the handler still runs at once (the requeue is registered when the signal comes),
    and its exit is raised at the next batch end of a running trainer (fit, test, predict,
    within one batch) or at once between them. Without a Python handler for ``signum`` (a job
    of submitit's ``debug`` executor, in the calling process) it changes nothing.
    """

    def __init__(self, signum: int) -> None:
        self._pending: SystemExit | None = None
        self._trainer_running = False
        handler = signal.getsignal(signum)
        if not callable(handler):
            return

        def deferred(number: int, frame: Any) -> None:
            try:
                handler(number, frame)
            except SystemExit as exit_:
                if not self._trainer_running:
                    raise
                self._pending = exit_

        signal.signal(signum, deferred)

    def _exit_if_asked(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            raise pending

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer_running = True

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer_running = False
        self._exit_if_asked()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._trainer_running = False  # no teardown follows

    def on_train_batch_end(self, *args: Any) -> None:
        self._exit_if_asked()

    def on_validation_batch_end(self, *args: Any) -> None:
        self._exit_if_asked()

    def on_test_batch_end(self, *args: Any) -> None:
        self._exit_if_asked()

    def on_predict_batch_end(self, *args: Any) -> None:
        self._exit_if_asked()


def _resumable_checkpoint(path: Path) -> Path | None:
    """``path`` when the unit resumes from it, None when the unit trains from the start.

    The file is read as data first (:func:`~add_lightning.checkpoint.read_checkpoint`), and the
    read is handed to the unit's `fit` (:func:`~add_lightning.checkpoint.hand_over`). One
    that is not a readable checkpoint (cut short by an interrupted save of an older version, a
    disk error) is renamed to ``last.ckpt.damaged``, kept for a look, and the unit trains from
    the start; nothing is deleted.

    Raises:
        CheckpointError: If the file holds objects that are not loaded for safety, or is not a
            Lightning checkpoint with the training state: this runner did not write it.
    """
    if not path.exists():
        return None
    try:
        # the unit's fit takes this read instead of reading the file again
        hand_over(read_checkpoint(path, resume=True))
    except FileNotFoundError:  # moved aside meanwhile by the unit's first process
        return None
    except DamagedCheckpointError as error:
        if _is_rank_zero():  # the unit's other processes (SLURM tasks) may read it too
            aside = path.with_name(f"{path.name}.damaged")
            os.replace(path, aside)
            log.warning("%s Moved it to %s; training this unit from the start", error, aside)
        return None
    except CheckpointError as error:  # not left by a save of this runner: a person looks first
        raise CheckpointError(
            f"{error} Not resumed: move it away to train this unit from the start."
        ) from None
    return path


def _exit_with_parent(parent_pid: int | None) -> None:
    """Dies (SIGKILL) when the runner dies, so that a killed runner leaves no orphan training.

    Under DDP, Lightning starts ranks > 0 by re-running this command from rank 0: those die
    with rank 0 instead.
    """
    if parent_pid is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    started_by_rank_zero = os.environ.get("LOCAL_RANK", "0") != "0"
    if not started_by_rank_zero and os.getppid() != parent_pid:  # the runner died already
        os.kill(os.getpid(), signal.SIGKILL)


def unit_arguments(
    experiment: str | os.PathLike[str], run_dir: Path, seed: int, fold: int | None
) -> list[str]:
    """The LightningCLI arguments of a unit: the experiment config plus the unit's settings.

    The seed goes to ``seed_everything`` and, when the data module has a ``seed`` argument
    (shuffling, augmentation, validation hold-out), to it too: one seed, one run.
    """
    config = yaml.safe_load(Path(experiment).read_text(encoding="utf-8")) or {}
    data_args = (config.get("data") or {}).get("init_args") or {}
    args = ["--config", str(experiment), "--seed_everything", str(seed)]
    args += ["--trainer.default_root_dir", str(run_dir)]
    if "seed" in data_args:
        args += ["--data.init_args.seed", str(seed)]
    if fold is not None:
        args += ["--data.init_args.fold", str(fold)]
    return args


def run_unit(
    experiment: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    seed: int,
    config_hash: str,
    fold: int | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, float]:
    """Fits (or resumes), tests and exports the test embeddings of one unit.

    Args:
        experiment: The composed experiment config (``DIR/experiment.yaml``).
        run_dir: The unit's run directory (``--trainer.default_root_dir``).
        seed: ``--seed_everything``.
        config_hash: Recorded in ``test_metrics.json`` to tie the result to the config.
        fold: ``--data.init_args.fold``; None to keep the configured one.
        callbacks: More trainer callbacks.

    Returns:
        The test metrics (``test/acc``, ``test/f1``, ``test/geometry/...``).
    """
    from add_lightning.models import EmbeddingWriter
    from add_lightning.models.data_contract import DataSplits

    run_dir = Path(run_dir)
    checkpoint = _resumable_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    cli = experiment_cli_class()(args=unit_arguments(experiment, run_dir, seed, fold), run=False)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    trainer.callbacks.append(RNGStateCheckpoint())
    trainer.callbacks.extend(callbacks)

    if checkpoint is not None:
        log.info("Resuming %s from %s", run_dir.name, checkpoint)
    fit_kwargs: dict[str, Any] = {"datamodule": datamodule, "ckpt_path": checkpoint}
    if "weights_only" in inspect.signature(trainer.fit).parameters:  # Lightning >= 2.6
        # a file in the run folder is data, whoever wrote it (the Trainer's SafeCheckpointIO
        # loads it so anyway)
        fit_kwargs["weights_only"] = True
    trainer.fit(model, **fit_kwargs)

    (metrics,) = trainer.test(model, datamodule=datamodule, verbose=False)
    # The test split's class names: the held-out classes when the data module holds some out.
    names = datamodule.split_class_names("test") if isinstance(datamodule, DataSplits) else None
    trainer.callbacks.append(EmbeddingWriter(str(run_dir / EMBEDDINGS_FILENAME), names))
    trainer.predict(model, dataloaders=datamodule.test_dataloader(), return_predictions=False)

    metrics = {key: float(value) for key, value in metrics.items()}
    if not trainer.is_global_zero:
        return metrics
    write_json_atomic(
        run_dir / METRICS_FILENAME,
        {
            "config_hash": config_hash,
            "fold": fold,
            "seed": seed,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "metrics": metrics,
        },
    )
    return metrics


def _is_rank_zero() -> bool:
    """Whether this process is the first (or only) one of its unit: DDP ranks > 0 started by
    Lightning carry ``LOCAL_RANK``, the tasks of a SLURM job ``SLURM_PROCID``."""
    return all(os.environ.get(name, "0") == "0" for name in ("LOCAL_RANK", "SLURM_PROCID"))


def execute_unit(
    experiment: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    seed: int,
    config_hash: str,
    fold: int | None = None,
    threads: int | None = None,
    callbacks: Sequence[Callback] = (),
) -> int:
    """:func:`run_unit` under the unit's lock, unless the unit is finished or busy.

    The first process of a unit holds ``RUN/.lock`` while it trains, so that two launchers (or
    a requeued SLURM job and its stale twin) never train one unit at the same time; a unit
    that became finished meanwhile is not trained again.

    Args:
        experiment, run_dir, seed, config_hash, fold: As for :func:`run_unit`.
        threads: ``torch.set_num_threads`` for units sharing the CPUs; None keeps torch's.
        callbacks: More trainer callbacks.

    Returns:
        0 when the unit is finished, :data:`UNIT_BUSY_STATUS` when another worker holds it.
    """
    from add_lightning.experiments.locks import LockBusyError, hold_lock

    if threads is not None:
        torch.set_num_threads(threads)
    if not _is_rank_zero():
        run_unit(experiment, run_dir, seed, config_hash, fold, callbacks)
        return 0
    try:
        with hold_lock(run_dir, exclusive=True):
            if unit_is_finished(run_dir, config_hash):
                log.info("Unit %s is finished already (by another worker)", run_dir)
                return 0
            run_unit(experiment, run_dir, seed, config_hash, fold, callbacks)
    except LockBusyError:
        log.warning("Unit %s is being trained by another worker; leaving it to it", run_dir)
        return UNIT_BUSY_STATUS
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m add_lightning.experiments.unit``."""
    parser = argparse.ArgumentParser(prog="python -m add_lightning.experiments.unit")
    parser.add_argument("--experiment", required=True, help="DIR/experiment.yaml")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--config-hash", required=True)
    parser.add_argument("--fold", type=int, default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    _exit_with_parent(args.parent_pid)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return execute_unit(
            args.experiment, args.run_dir, args.seed, args.config_hash, args.fold, args.threads
        )
    except CheckpointError as error:
        # a file in the unit's folder, not a bug of the unit: one line, as the console prints
        log.error("%s", error)
        return 1
    except SIGTERMException:
        # Lightning turns SIGTERM into a SystemExit without a status, i.e. 0: report the signal
        # as a shell does (128 + 15), so that the runner never takes the unit for finished.
        log.warning("Unit %s stopped by SIGTERM; rerun to resume it", args.run_dir)
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
