"""The files of a search folder, readable without Optuna (``compare`` reads them).

Layout of a search folder ``DIR`` (``add-lightning search``)::

    DIR/search.yaml              the search: space, metric, folds, seeds, trials, storage, ...
    DIR/base.yaml                the composed config every trial starts from
    DIR/study.db                 the Optuna study (SQLite; another database with --storage)
    DIR/trials/trialN/           one experiment folder per trial: experiment.yaml (the trial's
                                 config), one run folder per (fold, seed) unit, and
        trial.json               the trial's record: state, values, validation metrics per unit
    DIR/trials.csv, trials.md    every trial (written from the study after each trial)
    DIR/workers/workerK/         each worker's log (unit.log)
    DIR/best.yaml                the best trial's config, for `cv` and `fit` as it is
    DIR/best/                    `cv` of best.yaml: the test folds, evaluated once

The study is the record of truth; ``trial.json`` files are written from it, after each trial.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from add_lightning.experiments.aggregate import markdown_table

__all__ = [
    "BASE_FILENAME",
    "BEST_DIRNAME",
    "BEST_FILENAME",
    "SEARCH_FILENAME",
    "TRIALS_DIRNAME",
    "TRIAL_FILENAME",
    "WORKERS_DIRNAME",
    "format_params",
    "is_search",
    "load_trial_records",
    "trial_folder",
    "trials_csv",
    "trials_markdown",
]

log = logging.getLogger(__name__)

SEARCH_FILENAME = "search.yaml"
BASE_FILENAME = "base.yaml"
BEST_FILENAME = "best.yaml"
BEST_DIRNAME = "best"
TRIALS_DIRNAME = "trials"
TRIAL_FILENAME = "trial.json"
WORKERS_DIRNAME = "workers"

_NOTE_CHARS = 100  # of a note in the Markdown table (why a trial was pruned or failed)


def is_search(directory: str | Path) -> bool:
    """Whether ``directory`` is the folder of an ``add-lightning search``."""
    return (Path(directory) / SEARCH_FILENAME).is_file()


def trial_folder(output: str | Path, number: int) -> Path:
    """The experiment folder of trial ``number``."""
    return Path(output) / TRIALS_DIRNAME / f"trial{number}"


def load_trial_records(output: str | Path) -> list[dict[str, Any]]:
    """The ``trial.json`` records of a search folder, by trial number; unreadable ones are
    logged and left out."""
    records = []
    for path in Path(output).glob(f"{TRIALS_DIRNAME}/trial*/{TRIAL_FILENAME}"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            record["number"], record["state"] = int(record["number"]), str(record["state"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("Ignoring unreadable trial record %s: %s", path, error)
            continue
        records.append(record)
    return sorted(records, key=lambda record: int(record["number"]))


def format_params(params: dict[str, Any]) -> str:
    """``lambda_mu_p=0.531, lr=0.00102`` (numbers to 3 significant digits)."""

    def shown(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    return ", ".join(f"{name}={shown(value)}" for name, value in params.items())


def _value(value: Any) -> str:
    return "" if value is None else repr(float(value))


def trials_csv(records: list[dict[str, Any]], parameters: list[str]) -> str:
    """One row per trial: number, state, value, the parameters, the mean validation metrics,
    the note (why pruned, failed or rerun). Raw values at full precision."""
    metrics = sorted({name for record in records for name in record.get("metrics") or {}})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", "state", "value", *parameters, *metrics, "note"])
    for record in records:
        params, means = record.get("params") or {}, record.get("metrics") or {}
        writer.writerow(
            [
                record["number"],
                record["state"],
                _value(record.get("value")),
                *(params.get(name, "") for name in parameters),
                *(_value(means.get(name)) for name in metrics),
                record.get("note") or "",
            ]
        )
    return buffer.getvalue()


def trials_markdown(
    records: list[dict[str, Any]], metric: str, best: int | None, title: str = "Trials"
) -> str:
    """The trials as a Markdown table; the best trial in bold."""
    rows = []
    for record in records:
        value = record.get("value")
        shown = "" if value is None or not math.isfinite(float(value)) else f"{float(value):.4f}"
        number = str(record["number"])
        if record["number"] == best:
            number, shown = f"**{number}**", f"**{shown}**"
        params = format_params(record.get("params") or {})
        note = record.get("note") or ""
        note = note if len(note) <= _NOTE_CHARS else note[: _NOTE_CHARS - 3] + "..."
        rows.append([number, record["state"].lower(), shown, params, note])
    text = f"# {title}\n\n{metric}: the mean over the trial's (fold, seed) units, on validation "
    text += "data only; the best trial in bold; the whole notes are in trials.csv.\n\n"
    return text + markdown_table(["trial", "state", metric, "values", "note"], rows)
