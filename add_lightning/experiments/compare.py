"""A Table-2-like comparison of experiments: rows are losses, columns dataset × backbone.

Each experiment directory (written by ``add-lightning cv``) is described from its composed
config (``experiment.yaml``): the data module's class, the backbone's class and the loss
(``"CE + ADD (1,1,1,1)"``). Cells are "mean ± std" over seeds of the chosen metric; the best
cell of each column is in bold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from add_lightning.experiments.aggregate import (
    Summary,
    aggregate,
    format_mean_std,
    format_value,
    is_percentage,
    load_unit_results,
    markdown_table,
)
from add_lightning.experiments.config import EXPERIMENT_FILENAME, config_hash

__all__ = ["ExperimentKey", "compare_table", "describe_experiment", "load_experiment"]

# Abbreviations of the loss classes, in the words of the paper's tables.
_LOSS_NAMES = {
    "CrossEntropyLoss": "CE",
    "FocalLoss": "Focal",
    "OrthogonalProjectionLoss": "OPL",
    "ADDLoss": "ADD",
}
# Names of the datasets in the paper's tables.
_DATASET_NAMES = {"ESC50": "ESC-50", "SpeechCommands": "KS2", "IEMOCAP": "ER"}
_ADD_WEIGHTS = ("lambda_mu_p", "lambda_sigma_p", "lambda_mu_n", "lambda_sigma_n")


@dataclass(frozen=True)
class ExperimentKey:
    """Where an experiment goes in the table: row ``loss``, column ``dataset backbone``."""

    dataset: str
    backbone: str
    loss: str

    @property
    def column(self) -> str:
        return f"{self.dataset} {self.backbone}"


def _class_name(node: Any) -> str | None:
    """Short class name of a ``{class_path: ..., init_args: ...}`` config node, or None."""
    if isinstance(node, dict) and isinstance(node.get("class_path"), str):
        return node["class_path"].rsplit(".", 1)[-1]
    return None


def _init_args(node: Any) -> dict[str, Any]:
    args = node.get("init_args") if isinstance(node, dict) else None
    return args if isinstance(args, dict) else {}


def _describe_loss_part(node: Any) -> str | None:
    name = _class_name(node)
    if name is None:
        return None
    short = _LOSS_NAMES.get(name, name)
    if name == "ADDLoss":
        args = _init_args(node)
        weights = ",".join(f"{float(args.get(key, 1.0)):g}" for key in _ADD_WEIGHTS)
        return f"{short} ({weights})"
    return short


def describe_loss(loss: Any) -> str:
    """``"CE"``, ``"Focal"``, ``"CE + OPL"``, ``"CE + ADD (1,1,1,1)"`` from a loss config node."""
    if loss is None:
        return "CE"  # AudioClassifier's default: ClassificationLoss() = cross-entropy alone
    name = _class_name(loss)
    if name is None:
        return "?"
    if name != "ClassificationLoss":
        return _describe_loss_part(loss) or name
    args = _init_args(loss)
    classifier = _describe_loss_part(args.get("classifier")) or "CE"
    embedding = _describe_loss_part(args.get("embedding"))
    return classifier if embedding is None else f"{classifier} + {embedding}"


def describe_experiment(config: dict[str, Any]) -> ExperimentKey:
    """Reads dataset, backbone and loss names from a composed experiment config.

    The dataset is the data module's ``dataset`` argument when it has one (else the data module
    itself), named as in the paper's tables (``ESC50`` -> ``ESC-50``, ``SpeechCommands`` ->
    ``KS2``, ``IEMOCAP`` -> ``ER``); other class names lose a ``DataModule``/``Backbone`` suffix.
    """
    data = config.get("data")
    dataset = _class_name(_init_args(data).get("dataset")) or _class_name(data) or "?"
    dataset = _DATASET_NAMES.get(dataset, dataset.removesuffix("DataModule") or dataset)
    backbone = _class_name(_init_args(config.get("model")).get("backbone")) or "?"
    backbone = backbone.removesuffix("Backbone") or backbone
    loss = describe_loss(_init_args(config.get("model")).get("loss"))
    return ExperimentKey(dataset, backbone, loss)


def load_experiment(directory: str | Path) -> tuple[ExperimentKey, Summary]:
    """The table position and the aggregated results of one ``add-lightning cv`` directory.

    Raises:
        FileNotFoundError: If ``directory`` holds no ``experiment.yaml``.
        ValueError: If it holds no finished unit of that config, or the seeds ran on different
            folds (an unfinished experiment: rerun ``add-lightning cv`` to complete it).
    """
    directory = Path(directory)
    config_path = directory / EXPERIMENT_FILENAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"Expected an experiment directory written by `add-lightning cv` holding "
            f"{EXPERIMENT_FILENAME}, but {config_path} does not exist"
        )
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    results = load_unit_results(directory, config_hash(config))
    if not results:
        raise ValueError(f"Expected finished units in {directory}, found none for its config")
    try:
        summary = aggregate(results)
    except ValueError as error:
        raise ValueError(f"Cannot aggregate the results in {directory}: {error}") from error
    return describe_experiment(config), summary


def compare_table(
    directories: Sequence[str | Path], metric: str = "test/acc", higher_is_better: bool = True
) -> str:
    """A Markdown table: one row per loss, one column per dataset × backbone, best in bold.

    Rows and columns follow the order in which they first appear in ``directories``; a
    missing cell is ``-``. The best mean of each column (compared as displayed) is bold.

    Raises:
        ValueError: If two directories fall in the same cell, or one lacks ``metric``.
    """
    cells: dict[tuple[str, str], tuple[float, float, Path]] = {}
    rows: list[str] = []
    columns: list[str] = []
    for directory in directories:
        key, summary = load_experiment(directory)
        if metric not in summary.mean:
            raise ValueError(
                f"Expected metric `{metric}` in the results of {directory}, got "
                f"{', '.join(summary.metrics)}"
            )
        cell = (key.loss, key.column)
        if cell in cells:
            raise ValueError(
                "Expected one experiment per (loss, dataset × backbone) cell, got "
                f"{cells[cell][2]} and {directory} both for {key.loss!r} on {key.column!r}"
            )
        cells[cell] = (summary.mean[metric], summary.std[metric], Path(directory))
        rows += [key.loss] if key.loss not in rows else []
        columns += [key.column] if key.column not in columns else []

    # Compared as displayed: rounding is monotonic, so ties at display precision all get bold.
    best: dict[str, str] = {}
    for column in columns:
        means = [cells[(row, column)][0] for row in rows if (row, column) in cells]
        means = [mean for mean in means if not math.isnan(mean)]
        if means:
            best[column] = format_value(metric, max(means) if higher_is_better else min(means))

    table_rows = []
    for row in rows:
        line = [row]
        for column in columns:
            if (row, column) not in cells:
                line.append("-")
                continue
            mean, std, _ = cells[(row, column)]
            text = format_mean_std(metric, mean, std)
            if format_value(metric, mean) == best.get(column):
                text = f"**{text}**"
            line.append(text)
        table_rows.append(line)
    unit = " (%)" if is_percentage(metric) else ""
    caption = f"{metric}{unit}, mean ± std over seeds; best of each column in bold.\n\n"
    return caption + markdown_table(["loss", *columns], table_rows)
