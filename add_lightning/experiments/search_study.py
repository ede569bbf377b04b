"""What a search is (``search.yaml``) and the Optuna study its workers share.

The driver (:mod:`~add_lightning.experiments.search`) writes the search once; every worker
(:mod:`~add_lightning.experiments.search_worker`) reads it and opens the same study. Workers
ask for trials one at a time under ``trials/.lock``, and each holds its trial's lock
(``trials/trialN/.lock``) while it trains it. A trial the study lists as running whose lock
is free lost its worker (``kill -9``, a node failure, a preempted job): it is marked failed and
its values are enqueued again, so the next worker reruns it (:func:`recover_interrupted`).
flock locks are released by the kernel when their holder dies, so nothing stale survives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from add_lightning.atomic import write_json_atomic, write_text_atomic
from add_lightning.experiments.config import ExperimentConfigError, config_hash
from add_lightning.experiments.locks import lock_is_free
from add_lightning.experiments.search_records import (
    BASE_FILENAME,
    SEARCH_FILENAME,
    TRIAL_FILENAME,
    TRIALS_DIRNAME,
    trial_folder,
    trials_csv,
    trials_markdown,
)
from add_lightning.experiments.search_space import SearchSpace

__all__ = [
    "Search",
    "best_trial_number",
    "finished_trials",
    "import_optuna",
    "left_to_ask",
    "open_study",
    "read_search",
    "recover_interrupted",
    "remove_checkpoints",
    "write_search",
    "write_trial_records",
]

log = logging.getLogger(__name__)

# Settings a rerun may change; the others make another search (another --output).
_CHANGEABLE = ("trials", "pruner", "keep_checkpoints")
# SQLite waits this long for another worker's write instead of failing at once.
_SQLITE_TIMEOUT_S = 60


def import_optuna() -> Any:
    """``optuna``, or a one-line error saying which extra installs it.

    Raises:
        RuntimeError: If Optuna is not installed.
    """
    try:
        import optuna
    except ImportError:
        raise RuntimeError(
            "`add-lightning search` needs Optuna, which is not installed: "
            "pip install 'add-lightning[search]' (or pip install optuna)"
        ) from None
    # Its records through this process's logging (one format, the worker's log), not its own
    # stderr handler.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    return optuna


@dataclass(frozen=True)
class Search:
    """A search: what is searched, how a trial is scored, where the study lives.

    Attributes:
        output: The search folder.
        base: The composed config every trial starts from (``base.yaml``).
        space: The searched parameters.
        folds: The folds of every trial (None: the data config's).
        seeds: The seeds of every trial.
        metric: The validation metric a trial is scored by (the mean over its units).
        direction: ``"maximize"`` or ``"minimize"``.
        trials: Trials to finish (complete or pruned).
        seed: Seed of the sampler.
        storage: An Optuna storage URL; None: ``sqlite:///DIR/study.db``.
        study_name: The study's name in the storage.
        pruner: ``optuna.pruners.MedianPruner`` arguments; None: no pruning.
        keep_checkpoints: Keep the trials' checkpoints (else deleted when a trial ends).
        validation: How the trials validate, in words.
    """

    output: Path
    base: dict[str, Any]
    space: SearchSpace
    folds: list[int] | None
    seeds: list[int]
    metric: str
    direction: str
    trials: int
    seed: int = 0
    storage: str | None = None
    study_name: str = "search"
    pruner: dict[str, int] | None = field(default_factory=lambda: {"n_startup_trials": 5})
    keep_checkpoints: bool = False
    validation: str = ""

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.output / 'study.db').resolve()}"

    @property
    def trials_dir(self) -> Path:
        return self.output / TRIALS_DIRNAME

    def settings(self) -> dict[str, Any]:
        """``search.yaml``'s content (the base config is in ``base.yaml``)."""
        return {
            "space": self.space.as_dict(),
            "folds": self.folds,
            "seeds": list(self.seeds),
            "metric": self.metric,
            "direction": self.direction,
            "trials": self.trials,
            "seed": self.seed,
            "storage": self.storage,
            "study_name": self.study_name,
            "pruner": self.pruner,
            "keep_checkpoints": self.keep_checkpoints,
            "validation": self.validation,
            "base_config_hash": config_hash(self.base),
        }

    def digest(self) -> str:
        """What identifies the search: everything but the settings a rerun may change."""
        fixed = {k: v for k, v in self.settings().items() if k not in _CHANGEABLE}
        return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]


# The fields of Search that search.yaml holds as they are.
_FIELDS = (
    "folds",
    "seeds",
    "metric",
    "direction",
    "trials",
    "seed",
    "storage",
    "study_name",
    "pruner",
    "keep_checkpoints",
    "validation",
)


def read_search(path: str | Path) -> Search:
    """Reads ``DIR/search.yaml`` and ``DIR/base.yaml``.

    Raises:
        ExperimentConfigError: If a file is missing or not a search's.
    """
    path = Path(path)
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
        base = yaml.safe_load((path.parent / BASE_FILENAME).read_text(encoding="utf-8"))
        return Search(
            output=path.parent,
            base=base,
            space=SearchSpace.from_dict(settings["space"]),
            **{key: settings[key] for key in _FIELDS},
        )
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as error:
        raise ExperimentConfigError(
            f"Expected the search files {path} and {BASE_FILENAME} beside it, written by "
            f"`add-lightning search`, but they do not read ({type(error).__name__}: {error})"
        ) from None


def write_search(search: Search) -> None:
    """Writes the search's files, or checks that the folder holds the same search.

    A rerun may change the number of trials, the pruner and whether checkpoints are kept.

    Raises:
        ExperimentConfigError: If the folder holds another search, naming what differs.
    """
    path = search.output / SEARCH_FILENAME
    if path.is_file():
        old = read_search(path)
        if old.digest() != search.digest():
            before, after = old.settings(), search.settings()
            differ = [k for k in after if k not in _CHANGEABLE and before.get(k) != after[k]]
            raise ExperimentConfigError(
                f"Expected {path} to be this search, but its {', '.join(differ)} differ "
                f"({'; '.join(f'{k}: {before.get(k)!r}, now {after[k]!r}' for k in differ)[:400]})"
                ". Use another --output for another search"
            )
    search.output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(search.output / BASE_FILENAME, yaml.safe_dump(search.base, sort_keys=False))
    write_text_atomic(path, yaml.safe_dump(search.settings(), sort_keys=False))


def open_study(search: Search, create: bool = False) -> Any:
    """The search's Optuna study (created, with the enqueued trials, when ``create``).

    Raises:
        ExperimentConfigError: If the storage holds a study of this name made by the search
            of another folder (its trials' folders are there, not here).
    """
    optuna = import_optuna()
    engine = {"connect_args": {"timeout": _SQLITE_TIMEOUT_S}}
    url = search.storage_url
    storage = optuna.storages.RDBStorage(
        url, engine_kwargs=engine if url.startswith("sqlite") else None
    )
    pruner = (
        optuna.pruners.MedianPruner(**search.pruner)
        if search.pruner is not None
        else optuna.pruners.NopPruner()
    )
    if create:
        study = optuna.create_study(
            storage=storage,
            study_name=search.study_name,
            direction=search.direction,
            pruner=pruner,
            load_if_exists=True,
        )
        owner = study.user_attrs.get("output")
        if owner is None:
            study.set_user_attr("output", str(search.output.resolve()))
            for values in search.space.enqueue:
                study.enqueue_trial(values)
        elif owner != str(search.output.resolve()):
            raise ExperimentConfigError(
                f"Expected study {search.study_name!r} in {url} to belong to the search in "
                f"{search.output}, but it is the search in {owner}: use another --study-name"
            )
        return study
    return optuna.load_study(study_name=search.study_name, storage=storage, pruner=pruner)


def _states(study: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def finished_trials(study: Any) -> int:
    """Trials that count towards the search's number: complete or pruned."""
    counts = _states(study)
    return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)


def left_to_ask(study: Any, trials: int) -> int:
    """How many more trials workers should ask for: the enqueued ones, plus new ones until
    ``trials`` are finished, running or enqueued. Failed trials do not count (an interrupted
    one is enqueued again; one that failed with an error is replaced by a new one)."""
    counts = _states(study)
    waiting = counts.get("WAITING", 0)
    taken = sum(counts.get(state, 0) for state in ("COMPLETE", "PRUNED", "RUNNING"))
    return waiting + max(0, trials - taken - waiting)


def remove_checkpoints(folder: Path) -> None:
    """Deletes the checkpoints of a trial's units (a real model's are gigabytes each)."""
    for checkpoints in folder.glob("*/checkpoints"):
        shutil.rmtree(checkpoints, ignore_errors=True)


def recover_interrupted(study: Any, search: Search) -> list[int]:
    """Fails every running trial whose worker is gone and enqueues its values again (those it
    has: a trial whose worker was killed while asking for it has none yet).

    Call it under ``trials/.lock``: a worker takes its trial's lock before it lets go of that
    lock, so a running trial with a free lock has lost its worker.

    Returns:
        The numbers of the interrupted trials.
    """
    from optuna.trial import TrialState

    interrupted = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        folder = trial_folder(search.output, trial.number)
        if not lock_is_free(folder):
            continue
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        if not search.keep_checkpoints:
            remove_checkpoints(folder)
        log.warning(
            "Trial %d was interrupted (its worker stopped); it runs again with the same values",
            trial.number,
        )
        interrupted.append(trial.number)
    return interrupted


def trial_record(trial: Any, retries: dict[int, int]) -> dict[str, Any]:
    """A finished trial as ``trial.json`` holds it."""
    attrs = trial.user_attrs
    note = attrs.get("note") or ""
    if trial.number in retries:
        note = f"interrupted; rerun as trial {retries[trial.number]}"
    value = trial.value if trial.state.name == "COMPLETE" else None
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": None if value is None or not math.isfinite(value) else value,
        "metric": attrs.get("metric"),
        "params": dict(trial.params),
        "metrics": attrs.get("metrics") or {},
        "units": attrs.get("units") or [],
        "config_hash": attrs.get("config_hash"),
        "retry_of": attrs.get("retry_of"),
        "note": note,
        "started": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "finished": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_trial_records(study: Any, search: Search) -> list[dict[str, Any]]:
    """Writes ``trials/trialN/trial.json`` of every finished trial and ``trials.{csv,md}``.

    Returns:
        The records, by trial number.
    """
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    retries = {
        t.user_attrs["retry_of"]: t.number
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("retry_of") is not None
    }
    records = [trial_record(trial, retries) for trial in trials]
    for record in records:
        path = trial_folder(search.output, record["number"]) / TRIAL_FILENAME
        if path.parent.is_dir() and _read_json(path) != record:  # each worker writes them all
            write_json_atomic(path, record)
    best = best_trial_number(study)
    write_text_atomic(
        search.output / "trials.csv", trials_csv(records, list(search.space.parameters))
    )
    title = f"Trials: {search.output.name}"
    write_text_atomic(
        search.output / "trials.md", trials_markdown(records, search.metric, best, title)
    )
    return records


def best_trial_number(study: Any) -> int | None:
    """The number of the best complete trial, None before one completed."""
    try:
        return study.best_trial.number
    except ValueError:  # no complete trial
        return None
