"""Cross-validation × seeds runner: one fresh subprocess per (fold, seed) unit, resumable.

Layout of an experiment directory ``DIR``::

    DIR/experiment.yaml          the composed config (all --config files + overrides), once
    DIR/foldK_seedS/             one run directory per unit (``seedS/`` without folds)
        unit.json                which experiment config the unit belongs to (its hash)
        checkpoints/last.ckpt    resumed from after an interruption (and best.ckpt)
        config.yaml, hparams.yaml, events.out.tfevents.*   (TensorBoard)
        test_embeddings.npz      test-set embeddings (EmbeddingWriter)
        test_metrics.json        written last: the unit is finished iff it parses and its
                                 ``config_hash`` is the experiment's
    DIR/results.csv, DIR/results.md

Every file the runner trusts is written atomically, so an interruption (even ``kill -9``)
costs at most the unit in progress, which resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from add_lightning.experiments.aggregate import (
    METRICS_FILENAME,
    Summary,
    aggregate,
    load_unit_result,
    load_unit_results,
    write_results,
)
from add_lightning.experiments.atomic import write_json_atomic, write_text_atomic
from add_lightning.experiments.config import (
    EXPERIMENT_FILENAME,
    ExperimentConfigError,
    compose_config,
    config_hash,
)

__all__ = [
    "EMBEDDINGS_FILENAME",
    "Unit",
    "plan_units",
    "run_cv",
    "unit_is_finished",
]

log = logging.getLogger(__name__)

EMBEDDINGS_FILENAME = "test_embeddings.npz"
UNIT_FILENAME = "unit.json"
_LOCK_FILENAME = ".lock"


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


def unit_is_finished(run_dir: str | Path, expected_hash: str) -> bool:
    """A unit is finished iff its ``test_metrics.json`` parses and carries ``expected_hash``,
    and its ``test_embeddings.npz`` exists (a unit missing it is rerun: from its final
    checkpoint that is only test and export)."""
    result = load_unit_result(Path(run_dir) / METRICS_FILENAME)
    return (
        result is not None
        and result.config_hash == expected_hash
        and (Path(run_dir) / EMBEDDINGS_FILENAME).is_file()
    )


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
def _experiment_lock(output: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``output`` so that two runners never share a directory."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield
        return
    with open(output / _LOCK_FILENAME, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise ExperimentConfigError(
                f"Another `add-lightning cv` is running in {output} (it holds {handle.name})"
            ) from error
        yield


def _claim_run_dir(run_dir: Path, unit: Unit, expected_hash: str, force: bool) -> None:
    """Marks ``run_dir`` as belonging to the experiment, clearing a stale one under ``force``."""
    marker = run_dir / UNIT_FILENAME
    owner = None
    if marker.is_file():
        try:
            owner = json.loads(marker.read_text(encoding="utf-8")).get("config_hash")
        except (OSError, ValueError, AttributeError):
            owner = None
        if owner == expected_hash:
            return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not force:
            raise ExperimentConfigError(
                f"Expected {run_dir} to belong to the experiment config {expected_hash}, but "
                f"{marker} says {owner}; use --force to retrain it from scratch"
            )
        log.warning("Clearing %s, left by another experiment config (--force)", run_dir)
        shutil.rmtree(run_dir)
    write_json_atomic(marker, {"config_hash": expected_hash, "fold": unit.fold, "seed": unit.seed})


def _unit_command(output: Path, run_dir: Path, unit: Unit, expected_hash: str) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "add_lightning.experiments.unit",
        "--experiment",
        str(output / EXPERIMENT_FILENAME),
        "--run-dir",
        str(run_dir),
        "--seed",
        str(unit.seed),
        "--config-hash",
        expected_hash,
        "--parent-pid",
        str(os.getpid()),
    ]
    return command if unit.fold is None else [*command, "--fold", str(unit.fold)]


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


def run_cv(
    configs: Sequence[str | os.PathLike[str]],
    seeds: Sequence[int],
    output: str | os.PathLike[str],
    folds: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
) -> Summary:
    """Runs fit + test + predict for every (fold, seed) and aggregates the test metrics.

    Finished units are skipped; an interrupted unit resumes from ``checkpoints/last.ckpt``.
    Each unit runs in a fresh Python process (``python -m add_lightning.experiments.unit``).

    Args:
        configs: Config files, composed in order (as repeated ``--config`` of ``fit``).
        seeds: Seeds; each is passed as ``--seed_everything`` and, when the data module has
            a ``seed`` argument (shuffling, augmentation), as ``--data.init_args.seed``.
        output: Experiment directory.
        folds: Folds (``--data.init_args.fold``); None for the data module's configured fold.
        overrides: Further command line arguments of ``fit`` (``--trainer.max_epochs 2``).
        force: Replace the config of an experiment directory created with another config.

    Returns:
        The aggregated results, also written to ``output/results.{csv,md}``.

    Raises:
        ExperimentConfigError: If the config does not parse or does not fit ``output``/``folds``.
        RuntimeError: If a unit's process fails (rerunning resumes from its last checkpoint).
    """
    output = Path(output)
    config = compose_config(configs, overrides)
    units = plan_units(config, folds, seeds)
    output.mkdir(parents=True, exist_ok=True)
    with _experiment_lock(output):
        expected_hash = prepare_experiment(output, config, force)
        for index, unit in enumerate(units, start=1):
            run_dir = output / unit.name
            if unit_is_finished(run_dir, expected_hash):
                log.info("[%d/%d] %s: finished, skipped", index, len(units), unit.name)
                continue
            _claim_run_dir(run_dir, unit, expected_hash, force)
            log.info("[%d/%d] %s: running in %s", index, len(units), unit.name, run_dir)
            returncode = subprocess.run(
                _unit_command(output, run_dir, unit, expected_hash)
            ).returncode
            if returncode != 0 or not unit_is_finished(run_dir, expected_hash):
                how = (
                    f"was interrupted by signal {signal.Signals(returncode - 128).name}"
                    if returncode > 128 and returncode - 128 in signal.valid_signals()
                    else f"failed (exit status {returncode})"
                )
                raise RuntimeError(
                    f"Unit {unit.name} {how}; see its output above and {run_dir}. Rerun the "
                    "same command to resume from its last checkpoint"
                )
        summary = _aggregate_experiment(output, expected_hash, units)
        csv_path, md_path = write_results(output, summary, title=f"Results: {output.name}")
    log.info("Wrote %s and %s", csv_path, md_path)
    return summary
