"""A Table-2-like comparison of experiments: rows are losses, columns dataset × backbone.

Each experiment directory (written by ``add-lightning cv``) is described from its composed
config (``experiment.yaml``): the data module's class, the backbone's class and the loss
(``"CE + ADD (1,1,1,1)"``). Cells are "mean ± std" over seeds of the chosen metric; the best
cell of each column is in bold. With a baseline row, a second table gives each other row's
difference to it, paired over the (fold, seed) units both experiments have, with its 95 %
interval and Holm-adjusted p-values (:mod:`add_lightning.experiments.statistics`).

A search folder (``add-lightning search``) stands for its complete trials, one row each, with
their validation metrics (``--metric val/acc``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from add_lightning.experiments.aggregate import (
    Summary,
    UnitResult,
    aggregate,
    format_mean_std,
    format_value,
    is_percentage,
    load_unit_results,
    markdown_table,
)
from add_lightning.experiments.config import config_hash
from add_lightning.experiments.files import EXPERIMENT_FILENAME, SWEEP_FILENAME
from add_lightning.experiments.search_records import (
    BEST_DIRNAME,
    format_params,
    is_search,
    load_trial_records,
    trial_folder,
)
from add_lightning.experiments.statistics import (
    MIN_WILCOXON_PAIRS,
    Difference,
    holm,
    paired_difference,
    welch_difference,
)

__all__ = [
    "Comparison",
    "ExperimentKey",
    "baseline_comparisons",
    "compare_table",
    "comparisons_csv",
    "describe_experiment",
    "expand_sweeps",
    "load_experiment",
    "load_search_trials",
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


def load_search_trials(directory: str | Path) -> list[tuple[Path, ExperimentKey, Summary]]:
    """The complete trials of an ``add-lightning search`` folder, as experiments.

    Each trial is a row ``trial N (name=value, ...)`` of its dataset × backbone column, with
    its units' validation metrics (a search reads no test data; the best trial's test results
    are the ``cv`` experiment ``DIR/best``).

    Raises:
        ValueError: If no trial of the search is complete.
    """
    directory = Path(directory)
    experiments = []
    for record in load_trial_records(directory):
        if record["state"] != "COMPLETE":
            continue
        folder = trial_folder(directory, record["number"])
        config = yaml.safe_load((folder / EXPERIMENT_FILENAME).read_text(encoding="utf-8"))
        results = [
            UnitResult(unit["fold"], unit["seed"], unit["metrics"], record["config_hash"])
            for unit in record["units"]
        ]
        label = f"trial {record['number']} ({format_params(record['params'])})"
        key = replace(describe_experiment(config), loss=label)
        experiments.append((folder, key, aggregate(results)))
    if not experiments:
        raise ValueError(f"Expected complete trials in the search {directory}, found none")
    return experiments


def _experiments(directories: Sequence[str | Path]) -> list[tuple[Path, ExperimentKey, Summary]]:
    """Every experiment of ``directories``: sweeps expanded, a search's trials one each."""
    experiments = []
    for directory in expand_sweeps(directories):
        if is_search(directory):
            experiments += load_search_trials(directory)
        else:
            experiments.append((Path(directory), *load_experiment(directory)))
    return experiments


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better: losses and the embedding-geometry
    statistics (the four properties and the distance statistics); accuracy, F1 and retrieval
    metrics are better when larger."""
    return metric.rsplit("/", 1)[-1] == "loss" or "/geometry/" in f"/{metric}"


def _metric_list(metric: str | Sequence[str]) -> list[str]:
    metrics = [metric] if isinstance(metric, str) else list(metric)
    if not metrics or len(set(metrics)) != len(metrics):
        raise ValueError(f"Expected argument `metric` to name distinct metrics, got {metrics}")
    return metrics


def _load_cells(
    directories: Sequence[str | Path], metrics: list[str]
) -> tuple[dict[tuple[str, str], Summary], list[str], list[str]]:
    """The summary of each (loss, column) cell, and the rows and columns in order of appearance."""
    cells: dict[tuple[str, str], Summary] = {}
    paths: dict[tuple[str, str], Path] = {}
    rows: list[str] = []
    columns: list[str] = []
    for directory, key, summary in _experiments(directories):
        missing = [name for name in metrics if name not in summary.mean]
        if missing:
            trial = is_search(directory.parent.parent)
            hint = (
                f" (a search's trials have validation metrics only; its best trial's test "
                f"results are in {directory.parent.parent / BEST_DIRNAME})"
                if trial
                else ""
            )
            raise ValueError(
                f"Expected metric `{missing[0]}` in the results of {directory}, got "
                f"{', '.join(summary.metrics)}{hint}"
            )
        cell = (key.loss, key.column)
        if cell in cells:
            raise ValueError(
                "Expected one experiment per (loss, dataset × backbone) cell, got "
                f"{paths[cell]} and {directory} both for {key.loss!r} on {key.column!r}"
            )
        cells[cell], paths[cell] = summary, Path(directory)
        rows += [key.loss] if key.loss not in rows else []
        columns += [key.column] if key.column not in columns else []
    return cells, rows, columns


def compare_table(
    directories: Sequence[str | Path],
    metric: str | Sequence[str] = "test/acc",
    higher_is_better: bool | None = None,
    baseline: str | None = None,
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

    With ``baseline`` (a row, e.g. ``"CE"``) a second table follows: each other row's
    difference to the baseline in its column, ``+0.71 [+0.32, +1.10] p=0.004`` (see
    :func:`baseline_comparisons`; p-values Holm-adjusted over the rows of a column).

    Raises:
        ValueError: If two directories fall in the same cell, one lacks a metric, or
            ``baseline`` is not a row.
    """
    metrics = _metric_list(metric)
    cells, rows, columns = _load_cells(directories, metrics)

    def higher(name: str) -> bool:
        return not lower_is_better(name) if higher_is_better is None else higher_is_better

    # Compared as displayed: rounding is monotonic, so ties at display precision all get bold.
    best: dict[tuple[str, str], str] = {}
    for column in columns:
        for name in metrics:
            means = [cells[(row, column)].mean[name] for row in rows if (row, column) in cells]
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
                summary = cells[(row, column)]
                mean, std = summary.mean[name], summary.std[name]
                shown = format_mean_std(name, mean, std)
                if format_value(name, mean) == best.get((column, name)):
                    shown = f"**{shown}**"
                line.append(shown)
        table_rows.append(line)
    if len(metrics) == 1:
        unit = " (%)" if is_percentage(metrics[0]) else ""
        caption = f"{metrics[0]}{unit}, mean ± std over seeds; best of each column in bold.\n\n"
        text = caption + markdown_table(["loss", *columns], table_rows)
    else:
        header = [
            _metric_header(name) if len(columns) == 1 else f"{column} {_metric_header(name)}"
            for column in columns
            for name in metrics
        ]
        lower = [name for name in metrics if not higher(name)]
        caption = (
            f"{', '.join(metrics)}: mean ± std over seeds; accuracy and F1 in %; best of each "
            f"column in bold ({'lowest for ' + ', '.join(lower) if lower else 'highest'}"
            f"{', highest for the others' if lower and len(lower) < len(metrics) else ''}).\n\n"
        )
        text = caption + markdown_table(["loss", *header], table_rows)
    if baseline is not None:
        text += "\n" + _baseline_table(_comparisons(cells, rows, columns, metrics, baseline))
    return text


def _metric_header(metric: str) -> str:
    return f"{metric} (%)" if is_percentage(metric) else metric


@dataclass(frozen=True)
class Comparison:
    """One row's difference to the baseline for one metric in one column.

    Attributes:
        column: The dataset × backbone column.
        metric: The metric.
        row: The compared row (loss).
        baseline: The baseline row.
        difference: The statistics (raw values: fractions for accuracy and F1, not %).
        p_t_holm: ``difference.p_t`` Holm-adjusted over the rows of this column and metric.
        p_wilcoxon_holm: ``difference.p_wilcoxon`` Holm-adjusted likewise.
    """

    column: str
    metric: str
    row: str
    baseline: str
    difference: Difference
    p_t_holm: float | None
    p_wilcoxon_holm: float | None


def _unit_values(summary: Summary, metric: str) -> dict[tuple[int | None, int], float]:
    return {(unit.fold, unit.seed): unit.metrics[metric] for unit in summary.units}


def _difference(row: Summary, base: Summary, metric: str) -> Difference:
    """Paired over the (fold, seed) units both experiments have; Welch's test if none."""
    values, reference = _unit_values(row, metric), _unit_values(base, metric)
    common = [unit for unit in reference if unit in values]
    if not common:
        difference = welch_difference(list(values.values()), list(reference.values()))
        note = "no common (fold, seed) unit: " + difference.note
        return replace(difference, note=note)
    difference = paired_difference([values[u] for u in common], [reference[u] for u in common])
    total = len(values.keys() | reference.keys())
    if len(common) < total:
        note = f"{len(common)} of {total} units paired"
        difference = replace(difference, note="; ".join(filter(None, [note, difference.note])))
    return difference


def _comparisons(
    cells: dict[tuple[str, str], Summary],
    rows: list[str],
    columns: list[str],
    metrics: list[str],
    baseline: str,
) -> list[Comparison]:
    # a search's trial by its number alone: "trial 3" for "trial 3 (lambda_mu_p=0.5, ...)"
    trial = [row for row in rows if row.startswith(f"{baseline} (")]
    baseline = trial[0] if baseline not in rows and len(trial) == 1 else baseline
    if baseline not in rows:
        raise ValueError(
            f"Expected argument `baseline` to be one of the rows {rows}, got {baseline!r}"
        )
    comparisons = []
    for column in columns:
        if (baseline, column) not in cells:
            continue
        others = [row for row in rows if row != baseline and (row, column) in cells]
        for metric in metrics:
            base = cells[(baseline, column)]
            differences = [_difference(cells[(row, column)], base, metric) for row in others]
            p_t = holm([difference.p_t for difference in differences])
            p_w = holm([difference.p_wilcoxon for difference in differences])
            comparisons += [
                Comparison(column, metric, row, baseline, difference, *p)
                for row, difference, *p in zip(others, differences, p_t, p_w, strict=True)
            ]
    return comparisons


def baseline_comparisons(
    directories: Sequence[str | Path], metric: str | Sequence[str], baseline: str
) -> list[Comparison]:
    """Every row's difference to ``baseline`` per column and metric, over (fold, seed) units.

    Two experiments of a column that share units are compared paired over the shared units
    (the mean difference, the paired t-test's 95 % interval and p-value, and the Wilcoxon
    signed-rank p-value from :data:`MIN_WILCOXON_PAIRS` non-zero differences); with no
    shared unit, by Welch's t-test. Holm's correction runs over the rows of each column and
    metric. Columns without the baseline are left out.

    Raises:
        ValueError: As :func:`compare_table`.
    """
    metrics = _metric_list(metric)
    return _comparisons(*_load_cells(directories, metrics), metrics, baseline)


def _format_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"={p:.3f}"


def _format_comparison(comparison: Comparison) -> str:
    """``+0.71 [+0.32, +1.10] p=0.004 p_W=0.031 (note)``; accuracy and F1 in points of %."""
    difference = comparison.difference
    scale, digits = (100, 2) if is_percentage(comparison.metric) else (1, 4)
    text = "n/a" if math.isnan(difference.diff) else f"{scale * difference.diff:+.{digits}f}"
    if difference.ci_low is not None and difference.ci_high is not None:
        text += (
            f" [{scale * difference.ci_low:+.{digits}f}, {scale * difference.ci_high:+.{digits}f}]"
        )
    if comparison.p_t_holm is not None:
        text += f" p{_format_p(comparison.p_t_holm)}"
    if comparison.p_wilcoxon_holm is not None:
        text += f" p_W{_format_p(comparison.p_wilcoxon_holm)}"
    return f"{text} ({difference.note})" if difference.note else text


def _baseline_table(comparisons: list[Comparison]) -> str:
    if not comparisons:
        return "No column holds the baseline and another row.\n"
    baseline, metrics = comparisons[0].baseline, list(dict.fromkeys(c.metric for c in comparisons))
    header = list(dict.fromkeys((c.column, c.metric) for c in comparisons))
    rows = list(dict.fromkeys(c.row for c in comparisons))
    by_cell = {(c.row, c.column, c.metric): c for c in comparisons}
    table_rows = [
        [row, *(_format_cell(by_cell.get((row, *key))) for key in header)] for row in rows
    ]
    caption = (
        f"Difference to {baseline} (row - {baseline}; accuracy and F1 in points of %): the mean "
        "difference over the (fold, seed) units both experiments have [95 % interval of the "
        "paired t-test], its p-value p and the Wilcoxon signed-rank p-value p_W (from "
        f"{MIN_WILCOXON_PAIRS} non-zero differences), both Holm-adjusted over the rows of each "
        "column; Welch's t-test where the experiments share no unit.\n\n"
    )
    titles = [
        column if len(metrics) == 1 else f"{column} {_metric_header(metric)}"
        for column, metric in header
    ]
    return caption + markdown_table(["loss", *titles], table_rows)


def _format_cell(comparison: Comparison | None) -> str:
    return "-" if comparison is None else _format_comparison(comparison)


_CSV_FIELDS = (
    "column", "metric", "row", "baseline", "paired", "n", "n_baseline", "diff", "ci_low",
    "ci_high", "p_t", "p_t_holm", "p_wilcoxon", "p_wilcoxon_holm", "note",
)  # fmt: skip


def comparisons_csv(comparisons: Sequence[Comparison]) -> str:
    """CSV of :func:`baseline_comparisons`, one line per comparison, raw values at full
    precision (fractions for accuracy and F1); an undefined value is empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CSV_FIELDS)
    for c in comparisons:
        d = c.difference
        numbers = [d.diff, d.ci_low, d.ci_high, d.p_t, c.p_t_holm, d.p_wilcoxon, c.p_wilcoxon_holm]
        writer.writerow(
            [c.column, c.metric, c.row, c.baseline, d.paired, d.n, d.n_baseline]
            + ["" if value is None else repr(value) for value in numbers]
            + [d.note]
        )
    return buffer.getvalue()
