"""A worker of ``add-lightning search``: asks the study for trials and trains them, in-process.

Started by the search's launcher like a ``cv`` unit (a subprocess, or a submitit job), with the
same arguments: ``python -m add_lightning.experiments.search_worker --experiment DIR/search.yaml
--run-dir DIR/workers/workerK --seed K --config-hash H`` (``--seed`` is the worker's index,
``--config-hash`` the search's digest). Each worker holds ``workers/workerK/.lock`` while it
runs, so a worker of a rerun waits for a live one of the same index instead of doubling it.

A trial is the ``cv`` units of the trial's config (folds × seeds), trained one after another
in this process and scored on validation data only: ``fit``, then ``validate`` of the final
weights; nothing reads the test split. Its value is the mean of the search's metric over the
units. Each epoch's value is reported to the study (:class:`PruneTrial`), whose pruner may stop
the trial; a trial whose loss is not finite (diverged) is pruned too. Any other error fails
the trial and stops the worker (exit status 1): a rerun asks for a new trial.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from submitit.helpers import DelayedSubmission

from add_lightning.experiments.config import EXPERIMENT_FILENAME, compose_config, config_hash
from add_lightning.experiments.files import UNIT_BUSY_STATUS
from add_lightning.experiments.launchers import UnitJob, preemption_signal
from add_lightning.experiments.locks import (
    LockBusyError,
    clear_besides_lock,
    files_besides_lock,
    hold_lock,
)
from add_lightning.experiments.runner import Unit, plan_units, prepare_experiment
from add_lightning.experiments.search_records import BASE_FILENAME, format_params, trial_folder
from add_lightning.experiments.search_study import (
    Search,
    import_optuna,
    left_to_ask,
    open_study,
    read_search,
    recover_interrupted,
    remove_checkpoints,
    write_trial_records,
)
from add_lightning.experiments.slurm import log_submitit_once
from add_lightning.experiments.unit import (
    ExitAtBatchEnd,
    RNGStateCheckpoint,
    _exit_with_parent,
    unit_arguments,
)

__all__ = ["UNIT_STEPS", "PruneTrial", "WorkerJob", "fit_and_validate", "main", "run_worker"]

log = logging.getLogger(__name__)

#: Pruning steps per unit: unit ``i``'s epoch ``e`` is reported at step ``UNIT_STEPS * i + e``.
UNIT_STEPS = 10_000
# How long a worker waits for another one that is asking the study for a trial.
_ASK_WAIT_S = 600.0


class PruneTrial(Callback):
    """Reports the monitored validation metric of every epoch to an Optuna trial, and stops the
    trial (``optuna.TrialPruned``) when the study's pruner says so.

    As optuna-integration's ``PyTorchLightningPruningCallback``, but at step ``first_step +
    epoch``: a trial trains several units one after another, and Optuna ignores a second report
    at a step already reported, so epochs reported as steps would prune on the first unit alone.
    Step ``s`` of two trials is then the same unit's same epoch.

    Args:
        trial: The ``optuna.trial.Trial``.
        monitor: The metric (``val/acc``).
        first_step: The step of the unit's first epoch.
        unit: The unit's name, for the pruning message.
    """

    def __init__(self, trial: Any, monitor: str, first_step: int, unit: str) -> None:
        self.trial = trial
        self.monitor = monitor
        self.first_step = first_step
        self.unit = unit

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            logged = sorted(name for name in trainer.callback_metrics if name.startswith("val/"))
            raise ValueError(
                f"Expected the search metric `{self.monitor}` among the validation metrics, got "
                f"{', '.join(logged) or 'none'}"
            )
        epoch = trainer.current_epoch
        self.trial.report(float(value), self.first_step + epoch)
        if self.trial.should_prune():
            import optuna

            raise optuna.TrialPruned(
                f"pruned at {self.unit} epoch {epoch} ({self.monitor} {float(value):.4g})"
            )


def fit_and_validate(
    experiment: Path, run_dir: Path, unit: Unit, callbacks: list[Callback]
) -> dict[str, float]:
    """Trains one unit of a trial as ``cv`` would (same arguments, same random state), then
    validates its final weights.

    Returns:
        The validation metrics (``val/acc``, ``val/f1``, ``val/geometry/...``).
    """
    from add_lightning.experiments.config import experiment_cli_class

    cli = experiment_cli_class()(
        args=unit_arguments(experiment, run_dir, unit.seed, unit.fold), run=False
    )
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    trainer.callbacks.append(RNGStateCheckpoint())  # as in a cv unit: the same checkpoints
    trainer.callbacks.extend(callbacks)
    trainer.fit(model, datamodule=datamodule)
    (metrics,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    return {name: float(value) for name, value in metrics.items()}


def _clear(folder: Path) -> None:
    """Empties a new trial's folder but for its lock: anything there was left by a study
    of another storage (trial numbers are never reused within one)."""
    if files_besides_lock(folder):
        log.warning("Clearing %s: left by an earlier study", folder)
        clear_besides_lock(folder)


def _run_trial(
    study: Any, trial: Any, search: Search, units: list[Unit], callbacks: Sequence[Callback]
) -> None:
    """Trains and scores one trial (``callbacks`` added to each unit's trainer), and tells the
    study how it ended."""
    optuna = import_optuna()
    from optuna.trial import TrialState

    folder = trial_folder(search.output, trial.number)
    _clear(folder)
    log.info("Trial %d: %s", trial.number, format_params(trial.params))
    trial.set_user_attr("metric", search.metric)
    try:
        config = compose_config(
            [search.output / BASE_FILENAME], search.space.overrides(trial.params)
        )
        trial.set_user_attr("config_hash", config_hash(config))
        prepare_experiment(folder, config)
        results: list[dict[str, Any]] = []
        for index, unit in enumerate(units):
            pruning = PruneTrial(trial, search.metric, UNIT_STEPS * index, unit.name)
            metrics = fit_and_validate(
                folder / EXPERIMENT_FILENAME, folder / unit.name, unit, [pruning, *callbacks]
            )
            results.append({"fold": unit.fold, "seed": unit.seed, "metrics": metrics})
            trial.set_user_attr("units", results)
        means = {
            name: float(np.mean([result["metrics"][name] for result in results]))
            for name in results[0]["metrics"]
        }
        trial.set_user_attr("metrics", means)
        value = means[search.metric]
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"{search.metric} is {value}")
    except optuna.TrialPruned as pruned:
        trial.set_user_attr("note", str(pruned))
        study.tell(trial, state=TrialState.PRUNED)
    except FloatingPointError as error:  # the model's check of a non-finite loss
        trial.set_user_attr("note", f"diverged: {error}")
        study.tell(trial, state=TrialState.PRUNED)
    except Exception as error:
        trial.set_user_attr("note", f"{type(error).__name__}: {error}")
        study.tell(trial, state=TrialState.FAIL)
        raise
    else:
        study.tell(trial, value)
    # Not after SIGTERM or Ctrl+C (BaseException): such a trial stays running, and its
    # checkpoints go when a worker finds it interrupted.
    if not search.keep_checkpoints:
        remove_checkpoints(folder)


def _sampler(seed: int, worker: int, asked: int) -> Any:
    """A TPE sampler seeded by the search's seed, the worker and the trials asked so far: a
    restarted worker does not draw again what it drew before it stopped."""
    from optuna.samplers import TPESampler

    state = np.random.SeedSequence([seed, worker, asked]).generate_state(1)[0]
    return TPESampler(seed=int(state))


def _next_trial(study: Any, search: Search, worker: int, stack: contextlib.ExitStack) -> Any | None:
    """The next trial, its lock held in ``stack``; None when the search needs no more."""
    with hold_lock(search.trials_dir, exclusive=True, wait_s=_ASK_WAIT_S):
        recover_interrupted(study, search)
        if left_to_ask(study, search.trials) == 0:
            return None
        study.sampler = _sampler(search.seed, worker, len(study.get_trials(deepcopy=False)))
        trial = study.ask(search.space.distributions())
        stack.enter_context(hold_lock(trial_folder(search.output, trial.number)))
        return trial


def run_worker(
    search_file: str | Path,
    run_dir: str | Path,
    worker: int,
    digest: str,
    threads: int | None = None,
    callbacks: Sequence[Callback] = (),
) -> int:
    """Runs trials of the search until it needs no more.

    Args:
        search_file: ``DIR/search.yaml``.
        run_dir: The worker's folder (its lock).
        worker: The worker's index (seeds its sampler).
        digest: The search's digest: a changed ``search.yaml`` is not run.
        threads: ``torch.set_num_threads`` for workers sharing the CPUs; None keeps torch's.
        callbacks: More callbacks of every unit's trainer.

    Returns:
        0, or :data:`UNIT_BUSY_STATUS` when a worker of this index runs already.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(hold_lock(run_dir, exclusive=True))
        except LockBusyError:
            log.warning("Worker %s runs already; leaving the search to it", run_dir)
            return UNIT_BUSY_STATUS
        search = read_search(search_file)
        if search.digest() != digest:
            raise RuntimeError(
                f"Expected the search {search_file} with digest {digest}, got {search.digest()}: "
                "it was changed; rerun `add-lightning search`"
            )
        import_optuna()
        study = open_study(search)
        units = plan_units(search.base, search.folds, search.seeds)
        while True:
            with contextlib.ExitStack() as stack:
                trial = _next_trial(study, search, worker, stack)
                if trial is None:
                    break
                try:
                    _run_trial(study, trial, search, units, callbacks)
                finally:
                    write_trial_records(study, search)
        log.info("The search needs no more trials: worker %d ends", worker)
    return 0


class WorkerJob(UnitJob):
    """The callable of a search worker's submitit job (SLURM, or submitit's local executor).

    A job that SLURM preempts or times out is requeued; its trial, left running, is found
    interrupted and rerun by the next worker that asks for one.
    """

    def __call__(self) -> int:
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        log_submitit_once()
        task = self.task
        return run_worker(
            task.experiment,
            task.run_dir,
            task.seed,
            task.config_hash,
            self.threads,
            [ExitAtBatchEnd(preemption_signal())],  # as a cv unit's job
        )

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        log.warning("Search worker %s preempted or out of time: requeued", self.task.run_dir)
        return DelayedSubmission(WorkerJob(self.task, self.threads))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m add_lightning.experiments.search_worker``."""
    parser = argparse.ArgumentParser(prog="python -m add_lightning.experiments.search_worker")
    parser.add_argument("--experiment", required=True, help="DIR/search.yaml")
    parser.add_argument("--run-dir", required=True, help="the worker's folder")
    parser.add_argument("--seed", type=int, required=True, help="the worker's index")
    parser.add_argument("--config-hash", required=True, help="the search's digest")
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    _exit_with_parent(args.parent_pid)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_worker(args.experiment, args.run_dir, args.seed, args.config_hash, args.threads)
    except (ValueError, OSError, RuntimeError) as error:
        log.error("%s", error)
        return 1
    except SIGTERMException:
        # Lightning turns SIGTERM into a SystemExit without a status, i.e. 0 (see unit.main)
        log.warning("Worker %s stopped by SIGTERM; rerun the search to resume", args.run_dir)
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
