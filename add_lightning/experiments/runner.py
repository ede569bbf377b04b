"""Cross-validation × seeds runner: one fresh subprocess per (fold, seed) unit, resumable.

Layout of an experiment directory ``DIR``::

    DIR/experiment.yaml          the composed config (all --config files + overrides), once
    DIR/foldK_seedS/             one run directory per unit (``seedS/`` without folds)
        unit.json                which experiment config the unit belongs to (its hash)
        unit.log                 the unit's output (every attempt, appended)
        .lock                    held by the one process training the unit
        checkpoints/last.ckpt    resumed from after an interruption (and best.ckpt)
        config.yaml, hparams.yaml, events.out.tfevents.*   (TensorBoard)
        test_embeddings.npz      test-set embeddings (EmbeddingWriter)
        test_metrics.json        written last: the unit is finished iff it parses and its
                                 ``config_hash`` is the experiment's
    DIR/results.csv, DIR/results.md

Every file the runner trusts is written atomically, so an interruption (even ``kill -9``)
costs at most the units in progress, which resume from their last checkpoints. Units run one
after another, in parallel, or as SLURM jobs (:mod:`~add_lightning.experiments.launchers`);
a sweep (:mod:`~add_lightning.experiments.sweep`) is several such directories under one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from add_lightning.atomic import write_json_atomic, write_text_atomic
from add_lightning.experiments.aggregate import (
    Summary,
    aggregate,
    load_unit_results,
    unit_is_finished,
    write_results,
)
from add_lightning.experiments.config import (
    EXPERIMENT_FILENAME,
    ExperimentConfigError,
    compose_config,
    config_hash,
)
from add_lightning.experiments.files import EMBEDDINGS_FILENAME, UNIT_FILENAME
from add_lightning.experiments.launchers import (
    Failure,
    LocalBackend,
    SubmititBackend,
    Task,
    schedule,
    visible_gpus,
)
from add_lightning.experiments.locks import (
    LOCK_FILENAME,
    LockBusyError,
    clear_besides_lock,
    downgrade,
    files_besides_lock,
    hold_lock,
)
from add_lightning.experiments.progress import Progress
from add_lightning.experiments.slurm import (
    RESOURCE_PARAMETERS,
    UnitDevices,
    slurm_resources,
    unit_devices,
)
from add_lightning.experiments.sweep import _UNSET, SWEEP_FILENAME, Variant

__all__ = [
    "EMBEDDINGS_FILENAME",
    "Launch",
    "Unit",
    "UnitsFailedError",
    "plan_units",
    "run_cv",
    "run_sweep",
    "unit_is_finished",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    """One training run of an experiment: a fold (None without folds) and a seed."""

    fold: int | None
    seed: int

    @property
    def name(self) -> str:
        """The run directory's name: ``fold{k}_seed{s}``, or ``seed{s}`` without folds."""
        return f"seed{self.seed}" if self.fold is None else f"fold{self.fold}_seed{self.seed}"


def _data_fold(config: dict[str, Any]) -> tuple[bool, Any]:
    """Whether the data module takes a ``fold`` argument, and its configured value."""
    data_args = (config.get("data") or {}).get("init_args") or {}
    return "fold" in data_args, data_args.get("fold")


def plan_units(
    config: dict[str, Any], folds: Sequence[int] | None, seeds: Sequence[int]
) -> list[Unit]:
    """The units to run, seed by seed (each finished seed is a complete cross-validation).

    Without ``folds`` the data module's configured fold is used (None for datasets with an
    official split, e.g. Speech Commands).

    Raises:
        ExperimentConfigError: If ``folds`` is given for a data config without a fold (no
            ``fold`` argument, or ``fold: null``), or ``folds``/``seeds`` hold duplicates, or
            ``seeds`` is empty.
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise ExperimentConfigError(
            f"Expected argument `seeds` to be distinct seeds, got {list(seeds)}"
        )
    has_fold, configured = _data_fold(config)
    if folds:
        if not has_fold or configured is None:
            # fold: null marks a dataset with an official split (AudioDataModule rejects a fold).
            data = (config.get("data") or {}).get("class_path", "the data module")
            raise ExperimentConfigError(
                f"Expected a data config with a fold (e.g. `fold: 1`) for --folds {list(folds)}, "
                f"but {data} has {'fold: null' if has_fold else 'no fold argument'} (a dataset "
                "with an official split, e.g. Speech Commands): omit --folds"
            )
        if len(set(folds)) != len(folds):
            raise ExperimentConfigError(
                f"Expected argument `folds` to be distinct, got {list(folds)}"
            )
        unit_folds: list[int | None] = list(folds)
    else:
        unit_folds = [configured]
    return [Unit(fold, seed) for seed in seeds for fold in unit_folds]


def prepare_experiment(output: Path, config: dict[str, Any], force: bool = False) -> str:
    """Writes ``output/experiment.yaml`` once, or checks that it holds the same config.

    Returns:
        The config hash.

    Raises:
        ExperimentConfigError: If ``output`` was created with a different config and
            ``force`` is False.
    """
    path = output / EXPERIMENT_FILENAME
    new_hash = config_hash(config)
    if path.is_file():
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        old_hash = config_hash(old)
        if old_hash == new_hash:
            return new_hash
        if not force:
            raise ExperimentConfigError(
                f"Expected the config of the existing experiment {path} (hash {old_hash}), got a "
                f"different one (hash {new_hash}). Use another --output, or --force to replace "
                "the config (units of the old config are then retrained from scratch)"
            )
        log.warning("Replacing the experiment config %s (--force)", path)
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(config, sort_keys=False))
    return new_hash


@contextlib.contextmanager
def _experiment_lock(output: Path, exclusive: bool = True) -> Iterator[Any]:
    """Holds the lock on ``output`` (:mod:`~add_lightning.experiments.locks`): exclusively, or
    shared with other launchers of the same experiment."""
    with contextlib.ExitStack() as stack:
        try:
            handle = stack.enter_context(
                hold_lock(output, exclusive=exclusive, wait_s=0.0 if exclusive else 2.0)
            )
        except LockBusyError as error:
            how = (
                "; --force needs the directory alone"
                if exclusive
                else " exclusively (with --force, or writing its experiment.yaml)"
            )
            raise ExperimentConfigError(
                f"Another `add-lightning cv` is running in {output} (it holds "
                f"{output / LOCK_FILENAME}){how}"
            ) from error
        yield handle


def _join_experiment(
    stack: contextlib.ExitStack, output: Path, config: dict[str, Any], force: bool
) -> str:
    """Locks ``output`` for this launcher and writes or checks its ``experiment.yaml``.

    Several launchers may share an experiment (each holds the lock shared, and each unit has
    its own lock); writing ``experiment.yaml`` the first time, or replacing it (``force``),
    needs the directory alone.

    Returns:
        The config hash.
    """
    output.mkdir(parents=True, exist_ok=True)
    try:
        handle = stack.enter_context(_experiment_lock(output, exclusive=True))
    except ExperimentConfigError:
        if force:
            raise
        stack.enter_context(_experiment_lock(output, exclusive=False))
        return prepare_experiment(output, config)  # the other launcher's config, or an error
    digest = prepare_experiment(output, config, force)
    if not force:
        downgrade(handle)
    return digest


def _marker_hash(run_dir: Path) -> str | None:
    """The config hash in ``run_dir/unit.json``; None when it is missing or unreadable."""
    try:
        return json.loads((run_dir / UNIT_FILENAME).read_text(encoding="utf-8")).get("config_hash")
    except (OSError, ValueError, AttributeError):
        return None


def _claim_run_dir(run_dir: Path, unit: Unit, expected_hash: str, force: bool) -> None:
    """Marks ``run_dir`` as belonging to the experiment, clearing a stale one under ``force``.

    The claim is made under the unit's lock: a launcher sharing the experiment that claims the
    unit at the same moment waits for it, then finds the marker written, rather than taking the
    marker's temporary file for another experiment's files.
    """
    if _marker_hash(run_dir) == expected_hash:
        return
    try:
        with hold_lock(run_dir, exclusive=True, wait_s=0.0 if force else 10.0):
            owner = _marker_hash(run_dir)
            if owner == expected_hash:
                return
            if files_besides_lock(run_dir):
                if not force:
                    raise ExperimentConfigError(
                        f"Expected {run_dir} to belong to the experiment config "
                        f"{expected_hash}, but {run_dir / UNIT_FILENAME} says {owner}; use "
                        "--force to retrain it from scratch"
                    )
                log.warning("Clearing %s, left by another experiment config (--force)", run_dir)
                clear_besides_lock(run_dir)
            write_json_atomic(
                run_dir / UNIT_FILENAME,
                {"config_hash": expected_hash, "fold": unit.fold, "seed": unit.seed},
            )
    except LockBusyError as error:
        raise ExperimentConfigError(
            f"Expected nobody to train {run_dir} while this launcher claims it"
            f"{' and --force clears it' if force else ''}, but a worker holds "
            f"{run_dir / LOCK_FILENAME}"
        ) from error


def _aggregate_experiment(output: Path, expected_hash: str, units: Sequence[Unit]) -> Summary:
    """Aggregates every finished unit of the experiment, not only the ``units`` just run.

    A rerun with fewer folds or seeds must not shrink the experiment's table to a subset.

    Raises:
        ExperimentConfigError: If the finished units do not form a table (seeds run on different
            folds), saying which units to run.
    """
    finished = {
        (result.fold, result.seed): result
        for result in load_unit_results(output, expected_hash)
        if unit_is_finished(output / Unit(result.fold, result.seed).name, expected_hash)
    }
    extra = sorted(set(finished) - {(u.fold, u.seed) for u in units}, key=str)
    if extra:
        log.info(
            "%s holds %d finished units beyond this command's folds and seeds %s; the results "
            "cover all %d",
            output,
            len(extra),
            [Unit(*key).name for key in extra],
            len(finished),
        )
    try:
        return aggregate(finished.values())
    except ValueError as error:
        folds = sorted({fold for fold, _ in finished}, key=str)
        seeds = sorted({seed for _, seed in finished})
        raise ExperimentConfigError(
            f"The finished units of {output} do not form a complete table ({error}). Run the "
            f"missing ones: --folds {' '.join(map(str, folds))} --seeds {' '.join(map(str, seeds))}"
        ) from None


@dataclass(frozen=True)
class Launch:
    """Where and how the units of ``cv`` run (see :mod:`~add_lightning.experiments.launchers`).

    Attributes:
        launcher: ``"local"`` (subprocesses of this machine), ``"slurm"`` (a submitit job
            array) or ``"submitit-local"`` (the same submitit jobs on this machine).
        max_parallel: Units at once (SLURM: the job array's parallelism).
        gpus_per_unit: GPUs of each unit (``CUDA_VISIBLE_DEVICES`` locally; SLURM
            ``gpus_per_node``); None: the trainer config's (``trainer.devices`` on GPUs, none
            for ``accelerator: cpu``). On SLURM a unit has one task per device either way
            (:func:`~add_lightning.experiments.slurm.slurm_resources`).
        keep_going: Run the other units after one failed.
        wait: Wait for the units and aggregate (False: submit and return; SLURM only).
        slurm: submitit ``AutoExecutor`` parameters (``slurm_partition``, ``timeout_min``, ...).
        max_requeues: How often submitit requeues a preempted or timed-out unit.
    """

    launcher: str = "local"
    max_parallel: int = 1
    gpus_per_unit: int | None = None
    keep_going: bool = False
    wait: bool = True
    slurm: dict[str, Any] = field(default_factory=dict)
    max_requeues: int = 3


class UnitsFailedError(RuntimeError):
    """Some units did not finish; each is named with its log."""

    def __init__(self, failures: Sequence[Failure]) -> None:
        lines = [
            f"Unit {failure.task.label} {failure.reason}; see its log {failure.log_path}"
            for failure in failures
        ]
        super().__init__(
            "\n".join(lines) + "\nRerun the same command to resume from the last checkpoints"
        )
        self.failures = list(failures)


def _cpu_threads(max_parallel: int) -> int | None:
    """CPU threads per unit when ``max_parallel`` units share this machine (None: torch's)."""
    if max_parallel <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, len(os.sched_getaffinity(0)) // max_parallel)


def _local_gpus(launch: Launch, devices: set[UnitDevices]) -> int:
    """GPUs per unit on this machine: ``--gpus-per-unit``, else the most a trainer config
    uses (``devices`` taking all GPUs: all of this machine's)."""
    if launch.gpus_per_unit is not None:
        return launch.gpus_per_unit
    return max((each.devices or len(visible_gpus()) or 1) if each.gpu else 0 for each in devices)


def _slurm_resources(launch: Launch, devices: set[UnitDevices]) -> dict[str, Any]:
    """The GPUs, tasks and nodes of every unit's job: one set for the whole job array."""
    resources = {
        tuple(slurm_resources(each, launch.slurm, launch.gpus_per_unit).items()) for each in devices
    }
    if len(resources) > 1:
        found = " and ".join(str(dict(each)) for each in sorted(resources, key=str))
        raise ExperimentConfigError(
            "Expected the experiments of one command to need the same SLURM resources per "
            f"unit, got {found} (from their trainer.accelerator, devices, num_nodes): run them "
            "as separate commands"
        )
    return dict(resources.pop())


def _backend(launch: Launch, root: Path, configs: Sequence[Mapping[str, Any]] = ()) -> Any:
    """The launcher of ``launch`` for units of the experiment ``configs`` (their trainer
    configs size the units; none: Lightning's defaults)."""
    devices = {unit_devices(config) for config in configs} or {unit_devices({})}
    if launch.launcher == "local":
        if not launch.wait:
            raise ExperimentConfigError(
                "Expected --no-wait only with --launcher slurm: local units end with the launcher"
            )
        return LocalBackend(launch.max_parallel, _local_gpus(launch, devices))
    if launch.launcher not in ("slurm", "submitit-local"):
        raise ExperimentConfigError(
            f"Expected argument `--launcher` to be local, slurm or submitit-local, got "
            f"{launch.launcher!r}"
        )
    cluster = "slurm" if launch.launcher == "slurm" else "local"
    parameters = dict(launch.slurm)
    if cluster == "slurm":
        resources = _slurm_resources(launch, devices)
        for names in RESOURCE_PARAMETERS.values():
            for name in names:
                parameters.pop(name, None)
        parameters.update(resources)
        threads = parameters.get("cpus_per_task")
    else:
        # One task: on this machine Lightning starts the processes of a multi-device unit.
        parameters.setdefault(
            "gpus_per_node", _local_gpus(launch, devices) if visible_gpus() else 0
        )
        parameters.setdefault("tasks_per_node", 1)
        threads = _cpu_threads(launch.max_parallel)
    return SubmititBackend(
        root / ".submitit",
        cluster,
        {**parameters, "threads": threads},
        launch.max_parallel,
        launch.max_requeues,
    )


@dataclass(frozen=True)
class _Experiment:
    output: Path
    config: dict[str, Any]
    units: list[Unit]
    label: str  # prefix of its units in progress lines


def _run(
    experiments: Sequence[_Experiment], launch: Launch, force: bool, root: Path
) -> dict[Path, Summary]:
    """Runs the units of every experiment through one launcher; aggregates the complete ones.

    Raises:
        UnitsFailedError: If units failed (after the complete experiments' results are written).
    """
    summaries: dict[Path, Summary] = {}
    # its errors come before anything is written
    backend = _backend(launch, root, [experiment.config for experiment in experiments])
    with contextlib.ExitStack() as stack:
        tasks, hashes = [], {}
        for experiment in experiments:
            digest = _join_experiment(stack, experiment.output, experiment.config, force)
            hashes[experiment.output] = digest
            for unit in experiment.units:
                run_dir = experiment.output / unit.name
                if not unit_is_finished(run_dir, digest):
                    _claim_run_dir(run_dir, unit, digest, force)
                tasks.append(
                    Task(
                        experiment.output,
                        digest,
                        unit.fold,
                        unit.seed,
                        experiment.label + unit.name,
                    )
                )
        failures = schedule(
            tasks,
            backend,
            lambda task: unit_is_finished(task.run_dir, task.config_hash),
            keep_going=launch.keep_going,
            wait=launch.wait,
            progress=Progress(task.label for task in tasks),
        )
        if not launch.wait:
            log.info(
                "Submitted the unfinished units (submitit files in %s). Rerun the same command, "
                "or `add-lightning compare`, to aggregate what has finished",
                root / ".submitit",
            )
            return summaries
        for experiment in experiments:
            digest = hashes[experiment.output]
            if not all(
                unit_is_finished(experiment.output / u.name, digest) for u in experiment.units
            ):
                continue
            summary = _aggregate_experiment(experiment.output, digest, experiment.units)
            csv_path, md_path = write_results(
                experiment.output, summary, title=f"Results: {experiment.output.name}"
            )
            log.info("Wrote %s and %s", csv_path, md_path)
            summaries[experiment.output] = summary
    if failures:
        raise UnitsFailedError(failures)
    return summaries


def run_cv(
    configs: Sequence[str | os.PathLike[str]],
    seeds: Sequence[int],
    output: str | os.PathLike[str],
    folds: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
    launch: Launch | None = None,
) -> Summary | None:
    """Runs fit + test + predict for every (fold, seed) and aggregates the test metrics.

    Finished units are skipped; an interrupted unit resumes from ``checkpoints/last.ckpt``.
    Each unit runs in a fresh Python process (``python -m add_lightning.experiments.unit``, or
    a submitit job), under its own lock.

    Args:
        configs: Config files, composed in order (as repeated ``--config`` of ``fit``).
        seeds: Seeds; each is passed as ``--seed_everything`` and, when the data module has
            a ``seed`` argument (shuffling, augmentation), as ``--data.init_args.seed``.
        output: Experiment directory.
        folds: Folds (``--data.init_args.fold``); None for the data module's configured fold.
        overrides: Further command line arguments of ``fit`` (``--trainer.max_epochs 2``).
        force: Replace the config of an experiment directory created with another config.
        launch: Where the units run; None: one after another on this machine.

    Returns:
        The aggregated results, also written to ``output/results.{csv,md}``; None with
        ``launch.wait=False`` (submitted, not waited for).

    Raises:
        ExperimentConfigError: If the config does not parse or does not fit ``output``/``folds``.
        UnitsFailedError: If a unit's process fails (rerunning resumes from its last checkpoint).
    """
    output = Path(output)
    config = compose_config(configs, overrides)
    experiment = _Experiment(output, config, plan_units(config, folds, seeds), "")
    summaries = _run([experiment], launch or Launch(), force, output)
    return summaries.get(output)


def run_sweep(
    configs: Sequence[str | os.PathLike[str]],
    seeds: Sequence[int],
    output: str | os.PathLike[str],
    members: Sequence[Variant],
    folds: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
    launch: Launch | None = None,
) -> dict[str, Summary]:
    """:func:`run_cv` for each experiment of a sweep, all units through one launcher.

    Experiment ``member`` is ``output/<member.name>``: the command's ``configs`` then the
    member's, the command's ``overrides`` then the member's, its own folds and seeds if set.
    ``output/sweep.yaml`` lists the members; ``add-lightning compare output`` reads them.

    Returns:
        The results of each member whose units all finished, by name.

    Raises:
        ExperimentConfigError: If a member's config does not parse (before anything runs).
        UnitsFailedError: If units failed.
    """
    output = Path(output)
    experiments = []
    for member in members:
        config = compose_config([*configs, *member.configs], [*overrides, *member.overrides])
        member_folds = folds if member.folds is _UNSET else member.folds
        member_seeds = seeds if member.seeds is _UNSET else member.seeds
        units = plan_units(config, member_folds, member_seeds)
        experiments.append(_Experiment(output / member.name, config, units, f"{member.name}/"))
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        output / SWEEP_FILENAME,
        yaml.safe_dump({"experiments": [member.name for member in members]}, sort_keys=False),
    )
    summaries = _run(experiments, launch or Launch(), force, output)
    return {path.name: summary for path, summary in summaries.items()}
