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
from add_lightning.experiments.config import config_hash
from add_lightning.experiments.files import EXPERIMENT_FILENAME, SWEEP_FILENAME

__all__ = [
    "ExperimentKey",
    "compare_table",
    "describe_experiment",
    "expand_sweeps",
    "load_experiment",
    "lower_is_better",
]

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
    backbone_node = _init_args(config.get("model")).get("backbone")
    backbone = _class_name(backbone_node) or "?"
    backbone = backbone.removesuffix("Backbone") or backbone
    if backbone == "HFAudioEncoder":  # one class for many encoders: name the encoder
        encoder = _init_args(backbone_node)
        pretrained, model_config = encoder.get("pretrained"), encoder.get("config") or {}
        name = str(pretrained).rstrip("/").rsplit("/", 1)[-1] if pretrained else None
        backbone = name or model_config.get("model_type") or backbone
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


def expand_sweeps(directories: Sequence[str | Path]) -> list[Path]:
    """``directories`` with each sweep directory (``sweep.yaml``, no ``experiment.yaml``)
    replaced by its experiments, in the sweep's order.

    Raises:
        ValueError: If a ``sweep.yaml`` does not list experiments.
    """
    expanded = []
    for directory in map(Path, directories):
        sweep = directory / SWEEP_FILENAME
        if (directory / EXPERIMENT_FILENAME).is_file() or not sweep.is_file():
            expanded.append(directory)
            continue
        names = (yaml.safe_load(sweep.read_text(encoding="utf-8")) or {}).get("experiments")
        if not isinstance(names, list) or not names:
            raise ValueError(f"Expected {sweep} to list its experiments, got {names!r}")
        expanded += [directory / str(name) for name in names]
    return expanded


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better: losses and the embedding-geometry
    statistics (the four properties and the distance statistics); accuracy, F1 and retrieval
    metrics are better when larger."""
    return metric.rsplit("/", 1)[-1] == "loss" or "/geometry/" in f"/{metric}"


def compare_table(
    directories: Sequence[str | Path],
    metric: str | Sequence[str] = "test/acc",
    higher_is_better: bool | None = None,
) -> str:
    """A Markdown table: one row per loss, one column per dataset × backbone (× metric).

    With several metrics (e.g. ``test/acc``, ``test/retrieval/map_at_r`` and the four
    properties ``test/geometry/{mu_p,sigma_p,mu_n,sigma_n}``) each dataset × backbone column
    is repeated per metric, side by side; with a single dataset × backbone (an ablation) the
    columns are just the metrics. Rows and columns follow the order in which they first appear
    in ``directories``; a missing cell is ``-``. The best mean of each column (compared as
    displayed) is bold: the highest, or the lowest where ``higher_is_better`` is False; None
    decides per metric (:func:`lower_is_better`). A sweep directory of ``add-lightning cv``
    stands for all its experiments.

    Raises:
        ValueError: If two directories fall in the same cell, or one lacks a metric.
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    if not metrics or len(set(metrics)) != len(metrics):
        raise ValueError(f"Expected argument `metric` to name distinct metrics, got {metrics}")
    cells: dict[tuple[str, str], tuple[Summary, Path]] = {}
    rows: list[str] = []
    columns: list[str] = []
    for directory in expand_sweeps(directories):
        key, summary = load_experiment(directory)
        missing = [name for name in metrics if name not in summary.mean]
        if missing:
            raise ValueError(
                f"Expected metric `{missing[0]}` in the results of {directory}, got "
                f"{', '.join(summary.metrics)}"
            )
        cell = (key.loss, key.column)
        if cell in cells:
            raise ValueError(
                "Expected one experiment per (loss, dataset × backbone) cell, got "
                f"{cells[cell][1]} and {directory} both for {key.loss!r} on {key.column!r}"
            )
        cells[cell] = (summary, Path(directory))
        rows += [key.loss] if key.loss not in rows else []
        columns += [key.column] if key.column not in columns else []

    def higher(name: str) -> bool:
        return not lower_is_better(name) if higher_is_better is None else higher_is_better

    # Compared as displayed: rounding is monotonic, so ties at display precision all get bold.
    best: dict[tuple[str, str], str] = {}
    for column in columns:
        for name in metrics:
            means = [cells[(row, column)][0].mean[name] for row in rows if (row, column) in cells]
            means = [mean for mean in means if not math.isnan(mean)]
            if means:
                best[(column, name)] = format_value(
                    name, max(means) if higher(name) else min(means)
                )

    table_rows = []
    for row in rows:
        line = [row]
        for column in columns:
            for name in metrics:
                if (row, column) not in cells:
                    line.append("-")
                    continue
                summary = cells[(row, column)][0]
                mean, std = summary.mean[name], summary.std[name]
                text = format_mean_std(name, mean, std)
                if format_value(name, mean) == best.get((column, name)):
                    text = f"**{text}**"
                line.append(text)
        table_rows.append(line)
    if len(metrics) == 1:
        unit = " (%)" if is_percentage(metrics[0]) else ""
        caption = f"{metrics[0]}{unit}, mean ± std over seeds; best of each column in bold.\n\n"
        return caption + markdown_table(["loss", *columns], table_rows)
    header = [
        _metric_header(name) if len(columns) == 1 else f"{column} {_metric_header(name)}"
        for column in columns
        for name in metrics
    ]
    lower = [name for name in metrics if not higher(name)]
    caption = (
        f"{', '.join(metrics)}: mean ± std over seeds; accuracy and F1 in %; best of each column "
        f"in bold ({'lowest for ' + ', '.join(lower) if lower else 'highest'}"
        f"{', highest for the others' if lower and len(lower) < len(metrics) else ''}).\n\n"
    )
    return caption + markdown_table(["loss", *header], table_rows)


def _metric_header(metric: str) -> str:
    return f"{metric} (%)" if is_percentage(metric) else metric
