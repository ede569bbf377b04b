"""``add-lightning search``: an Optuna study whose trials are cross-validated experiments.

A trial sets the values of the search space (:mod:`~add_lightning.experiments.search_space`)
on the experiment's composed config and trains its ``cv`` units (folds × seeds), scored on
validation data only (:mod:`~add_lightning.experiments.search_worker`). Where the validation
split is the held-out fold, which is the test data (ESC-50, IEMOCAP, the quickstart: see
``AudioDataModule.validation_is_test``), every trial validates on an inner split instead,
``val_fraction`` of each fold's training clips. The test folds are evaluated once, at the end,
for the best trial: its config is written to ``best.yaml`` and run by ``cv`` in ``best/``.

Workers share the study through its storage (SQLite in the search folder by default) and run
where ``cv``'s units run: subprocesses of this machine or a SLURM job array
(:mod:`~add_lightning.experiments.launchers`). A rerun of the same command resumes: finished
trials are kept, an interrupted one is rerun with the same values, and a finished search only
runs (or reads) its final evaluation. File layout: :mod:`~add_lightning.experiments.search_records`.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from add_lightning.atomic import write_text_atomic
from add_lightning.experiments.aggregate import Summary
from add_lightning.experiments.compare import lower_is_better
from add_lightning.experiments.config import (
    EXPERIMENT_FILENAME,
    ExperimentConfigError,
    compose_config,
)
from add_lightning.experiments.launchers import Failure, LocalBackend, Task, schedule
from add_lightning.experiments.locks import hold_lock
from add_lightning.experiments.runner import Launch, Unit, _backend, plan_units, run_cv
from add_lightning.experiments.search_records import (
    BEST_DIRNAME,
    BEST_FILENAME,
    SEARCH_FILENAME,
    WORKERS_DIRNAME,
    format_params,
    trial_folder,
    trials_markdown,
)
from add_lightning.experiments.search_space import read_search_space
from add_lightning.experiments.search_study import (
    Search,
    best_trial_number,
    finished_trials,
    import_optuna,
    left_to_ask,
    open_study,
    recover_interrupted,
    write_search,
    write_trial_records,
)
from add_lightning.experiments.slurm import unit_devices

__all__ = [
    "SearchFailedError",
    "SearchOptions",
    "SearchResult",
    "WorkerTask",
    "inner_validation",
    "plan_search",
    "run_search",
]

log = logging.getLogger(__name__)

WORKER_MODULE = "add_lightning.experiments.search_worker"


@dataclass(frozen=True)
class SearchOptions:
    """How a search runs, beyond the configs, folds and seeds of its trials.

    Attributes:
        trials: Trials to finish (complete or pruned); enqueued ones included.
        metric: The validation metric a trial is scored by (``val/...``); minimized for losses
            and the embedding geometry, maximized otherwise (as ``compare`` bolds them).
        val_fraction: The inner validation split where validation is the test fold.
        seed: Seed of the TPE sampler.
        storage: An Optuna storage URL; None: ``sqlite:///OUTPUT/study.db``.
        study_name: The study's name in the storage.
        pruner: ``"median"`` (``optuna.pruners.MedianPruner``) or ``"none"``.
        pruner_startup_trials: Trials finished before the pruner prunes.
        pruner_warmup_epochs: Epochs of a trial's first unit never pruned.
        keep_checkpoints: Keep every trial's checkpoints (else deleted when the trial ends).
    """

    trials: int
    metric: str = "val/acc"
    val_fraction: float = 0.2
    seed: int = 0
    storage: str | None = None
    study_name: str = "search"
    pruner: str = "median"
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 0
    keep_checkpoints: bool = False


@dataclass(frozen=True)
class SearchResult:
    """A finished search.

    Attributes:
        records: Every finished trial's record (``trial.json``), by number.
        best: The best trial's record.
        best_config: ``OUTPUT/best.yaml``.
        test: The test results of ``cv`` on ``best.yaml`` (``OUTPUT/best``).
        markdown: The trials table.
    """

    records: list[dict[str, Any]]
    best: dict[str, Any]
    best_config: Path
    test: Summary
    markdown: str


class SearchFailedError(RuntimeError):
    """Workers failed, or the search has not finished its trials."""


@dataclass(frozen=True)
class WorkerTask(Task):
    """A search worker as the launchers see it: ``seed`` is the worker's index, ``output``
    the search folder, ``config_hash`` the search's digest."""

    @property
    def run_dir(self) -> Path:
        return self.output / WORKERS_DIRNAME / f"worker{self.seed}"

    @property
    def experiment(self) -> Path:
        return self.output / SEARCH_FILENAME


def inner_validation(
    config: dict[str, Any], units: Sequence[Unit], val_fraction: float
) -> tuple[dict[str, Any], str]:
    """The config whose trials validate on data other than the test data, and how, in words.

    As ``AudioDataModule.validation_is_test``: a data module with a held-out fold validates on
    that fold (the test data) unless its ``val_fraction`` > 0. Then ``val_fraction`` is set.

    Raises:
        ExperimentConfigError: If validation is the test fold and the data module has no
            ``val_fraction`` argument.
    """
    config = copy.deepcopy(config)
    data = config.get("data") or {}
    data_args = data.get("init_args") or {}
    folds = sorted({unit.fold for unit in units if unit.fold is not None})
    if not folds:
        return config, (
            "the trials validate on the data's validation split (the official split: the test "
            "split is another)"
        )
    if "val_fraction" not in data_args:
        raise ExperimentConfigError(
            f"Expected a data module with a `val_fraction` argument: {data.get('class_path')} "
            f"validates on the held-out fold, which is the test data, and a search must not "
            "select on the test data"
        )
    if data_args["val_fraction"]:
        return config, (
            f"the trials validate on val_fraction {data_args['val_fraction']} of each fold's "
            "training clips (the data config's)"
        )
    if not 0 < val_fraction < 1:
        raise ExperimentConfigError(
            f"Expected argument `--val-fraction` to be in (0, 1), got {val_fraction}"
        )
    data_args["val_fraction"] = val_fraction
    return config, (
        f"validation of fold(s) {', '.join(map(str, folds))} is the test fold, so the trials "
        f"validate on an inner split instead: val_fraction {val_fraction} of each fold's "
        "training clips (per class, drawn with the unit's seed); the test folds are evaluated "
        "once, for the best trial, at the end"
    )


def _check_devices(config: dict[str, Any]) -> None:
    devices = unit_devices(config)
    if devices.devices != 1 or devices.num_nodes != 1:
        raise ExperimentConfigError(
            "Expected trainer.devices 1 and trainer.num_nodes 1 for a search (a worker trains "
            f"its trials in its own process; run more --workers instead), got devices "
            f"{devices.devices or 'all GPUs'} on {devices.num_nodes} node(s): set "
            "--trainer.devices 1"
        )


def plan_search(
    configs: Sequence[str | os.PathLike[str]],
    space_file: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: SearchOptions,
    folds: Sequence[int] | None = None,
    seeds: Sequence[int] = (0,),
    overrides: Sequence[str] = (),
) -> Search:
    """The search of :func:`run_search`'s arguments, checked before anything runs: the
    composed base config (with the inner validation split where validation is the test
    fold), the resolved space, the study's direction and pruner.

    Raises:
        ExperimentConfigError: If the configs, the space or the options do not fit.
    """
    if not options.metric.startswith("val/"):
        raise ExperimentConfigError(
            f"Expected argument `--metric` to be a validation metric (val/...): a search selects "
            f"on validation data only, got {options.metric!r}"
        )
    if options.trials < 1:
        raise ExperimentConfigError(f"Expected argument `--trials` >= 1, got {options.trials}")
    base = compose_config(configs, overrides)
    units = plan_units(base, folds, seeds)
    _check_devices(base)
    base, validation = inner_validation(base, units, options.val_fraction)
    space = read_search_space(space_file, base)
    if len(space.enqueue) > options.trials:
        raise ExperimentConfigError(
            f"Expected at most --trials {options.trials} trials in `enqueue` of {space_file}, "
            f"got {len(space.enqueue)}"
        )
    pruner = None
    if options.pruner == "median":
        pruner = {
            "n_startup_trials": options.pruner_startup_trials,
            "n_warmup_steps": options.pruner_warmup_epochs,
        }
    elif options.pruner != "none":
        raise ExperimentConfigError(
            f"Expected argument `--pruner` to be median or none, got {options.pruner!r}"
        )
    return Search(
        output=Path(output),
        base=base,
        space=space,
        folds=list(folds) if folds else None,
        seeds=list(seeds),
        metric=options.metric,
        direction="minimize" if lower_is_better(options.metric) else "maximize",
        trials=options.trials,
        seed=options.seed,
        storage=options.storage,
        study_name=options.study_name,
        pruner=pruner,
        keep_checkpoints=options.keep_checkpoints,
        validation=validation,
    )


def _run_workers(search: Search, study: Any, launch: Launch) -> list[Failure]:
    """Runs ``launch.max_parallel`` workers through ``cv``'s launchers until the study needs
    no more trials (none when it needs none now)."""
    from add_lightning.experiments.search_worker import WorkerJob

    slurm = {"name": "add-lightning-search", **launch.slurm}
    backend = _backend(replace(launch, slurm=slurm), search.output, [search.base])
    if isinstance(backend, LocalBackend):
        backend.module = WORKER_MODULE
    else:
        backend.job_class = WorkerJob
    digest = search.digest()
    tasks = [
        WorkerTask(search.output, digest, None, index, f"worker{index}")
        for index in range(launch.max_parallel)
    ]
    return schedule(
        tasks,
        backend,
        lambda task: left_to_ask(study, search.trials) == 0,
        keep_going=launch.keep_going,
        wait=launch.wait,
    )


def _write_best_config(search: Search, record: dict[str, Any]) -> Path:
    """Writes the best trial's config as ``OUTPUT/best.yaml``, with how it was chosen."""
    folder = trial_folder(search.output, record["number"])
    config = (folder / EXPERIMENT_FILENAME).read_text(encoding="utf-8")
    folds = " ".join(map(str, search.folds)) if search.folds else None
    seeds = " ".join(map(str, search.seeds))
    command = f"add-lightning cv --config {search.output / BEST_FILENAME}"
    command += f" --folds {folds}" if folds else ""
    header = (
        f"# The best trial ({record['number']}) of the search {search.output}: "
        f"{search.metric} {record['value']:.6g}, the mean over folds {folds or '(configured)'} "
        f"x seeds {seeds}, on validation data only ({format_params(record['params'])}).\n"
        f"# {command} --seeds {seeds} --output DIR  trains the same units.\n"
    )
    path = search.output / BEST_FILENAME
    write_text_atomic(path, header + config)
    return path


def run_search(
    configs: Sequence[str | os.PathLike[str]],
    space: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: SearchOptions,
    folds: Sequence[int] | None = None,
    seeds: Sequence[int] = (0,),
    overrides: Sequence[str] = (),
    launch: Launch | None = None,
) -> SearchResult | None:
    """Runs (or resumes) a search and evaluates its best trial on the test folds.

    Args:
        configs: Config files, composed in order (as ``cv``'s ``--config``).
        space: The search-space file.
        output: The search folder.
        options: Trials, metric, storage, pruning (:class:`SearchOptions`).
        folds: Folds of every trial; None: the data config's fold.
        seeds: Seeds of every trial.
        overrides: Further ``fit`` arguments (``--trainer.max_epochs 2``).
        launch: Where the workers (``max_parallel`` of them) and the final ``cv`` run.

    Returns:
        The trials and the test results of the best one; None with ``launch.wait=False``
        (the workers were submitted, not waited for).

    Raises:
        ExperimentConfigError: If the configs, the space or the options do not fit, or the
            folder holds another search.
        SearchFailedError: If workers failed, or trials are missing (rerun to resume), or no
            trial completed.
    """
    import_optuna()
    output = Path(output)
    launch = launch or Launch()
    search = plan_search(configs, space, output, options, folds, seeds, overrides)
    output.mkdir(parents=True, exist_ok=True)
    with hold_lock(search.trials_dir, exclusive=True, wait_s=600.0):
        write_search(search)
        study = open_study(search, create=True)
        recover_interrupted(study, search)
    log.info("Search %s: %s", output, search.validation)
    failures = _run_workers(search, study, launch)
    records = write_trial_records(study, search)
    if not launch.wait:
        log.info("Submitted the workers; rerun the same command to wait for them and test")
        return None
    if failures:
        lines = [f"Worker {f.task.label} {f.reason}; see its log {f.log_path}" for f in failures]
        raise SearchFailedError("\n".join([*lines, "Rerun the same command to resume the search"]))
    finished = finished_trials(study)
    if finished < search.trials:
        raise SearchFailedError(
            f"The search has finished {finished} of {search.trials} trials; rerun the same "
            "command to resume it"
        )
    best = best_trial_number(study)
    if best is None:
        raise SearchFailedError(
            f"No trial of {output} completed (all were pruned or failed, see "
            f"{output / 'trials.md'}): nothing to test"
        )
    record = next(record for record in records if record["number"] == best)
    best_config = _write_best_config(search, record)
    log.info("Best trial %d (%s %.6g): %s", best, search.metric, record["value"], best_config)
    test = run_cv(
        [best_config], search.seeds, output / BEST_DIRNAME, search.folds, (), True, launch
    )
    markdown = trials_markdown(records, search.metric, best, f"Trials: {output.name}")
    return SearchResult(records, record, best_config, test, markdown)
