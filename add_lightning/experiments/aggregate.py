"""Aggregation of per-unit test metrics with the paper's protocol.

For each seed, the mean over folds; then, over seeds, the mean and the *sample* standard
deviation (``ddof=1``, i.e. divided by ``n_seeds - 1``), which is what "mean ± std of 3 runs"
in the paper reads as. With a single seed the standard deviation is undefined (NaN, shown as
"n/a"). Datasets without folds (Speech Commands' official split) have one unit per seed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from add_lightning.atomic import write_text_atomic
from add_lightning.experiments.files import EMBEDDINGS_FILENAME, METRICS_FILENAME

__all__ = [
    "METRICS_FILENAME",
    "Summary",
    "UnitResult",
    "aggregate",
    "format_mean_std",
    "format_value",
    "is_percentage",
    "load_unit_result",
    "load_unit_results",
    "markdown_table",
    "results_csv",
    "results_markdown",
    "unit_is_finished",
    "write_results",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnitResult:
    """The test metrics of one (fold, seed) unit; ``fold`` is None for datasets without folds."""

    fold: int | None
    seed: int
    metrics: dict[str, float]
    config_hash: str = ""


@dataclass(frozen=True)
class Summary:
    """Aggregated metrics of one experiment.

    Attributes:
        folds: The folds every seed was run on, sorted (``[None]`` without folds).
        seeds: The seeds, sorted.
        metrics: The metric names, sorted.
        units: The unit results, sorted by (seed, fold).
        per_seed: ``per_seed[seed][metric]``: the mean over folds.
        mean: ``mean[metric]``: the mean over seeds of ``per_seed``.
        std: ``std[metric]``: the sample standard deviation (ddof=1) over seeds; NaN for 1 seed.
    """

    folds: list[int | None]
    seeds: list[int]
    metrics: list[str]
    units: list[UnitResult]
    per_seed: dict[int, dict[str, float]]
    mean: dict[str, float]
    std: dict[str, float]


def load_unit_result(path: str | Path) -> UnitResult | None:
    """Reads one ``test_metrics.json``; None when it is missing or not a complete result file.

    A file that does not parse or lacks a field is reported (logged) and treated as absent, so
    that a damaged file is recomputed rather than trusted.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        fold = data["fold"]
        result = UnitResult(
            fold=None if fold is None else int(fold),
            seed=int(data["seed"]),
            metrics={str(k): float(v) for k, v in data["metrics"].items()},
            config_hash=str(data["config_hash"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning("Ignoring unreadable result file %s: %s", path, error)
        return None
    return result


def load_unit_results(output: str | Path, config_hash: str | None = None) -> list[UnitResult]:
    """Reads every ``<output>/*/test_metrics.json``, keeping those of ``config_hash`` if given."""
    results = []
    for path in sorted(Path(output).glob(f"*/{METRICS_FILENAME}")):
        result = load_unit_result(path)
        if result is None:
            continue
        if config_hash is not None and result.config_hash != config_hash:
            log.warning("Ignoring %s: written for another experiment config", path)
            continue
        results.append(result)
    return results


def _sort_key(result: UnitResult) -> tuple[int, int]:
    return result.seed, -1 if result.fold is None else result.fold


def aggregate(results: Iterable[UnitResult]) -> Summary:
    """Aggregates unit results: per seed the mean over folds, then mean ± sample std over seeds.

    Args:
        results: One result per (fold, seed); every seed must have the same set of folds.

    Raises:
        ValueError: If ``results`` is empty, holds a (fold, seed) twice, or the seeds were not
            all run on the same folds.
    """
    units = sorted(results, key=_sort_key)
    if not units:
        raise ValueError("Expected argument `results` to hold at least one unit result, got none")
    by_seed: dict[int, dict[int | None, UnitResult]] = {}
    for unit in units:
        folds = by_seed.setdefault(unit.seed, {})
        if unit.fold in folds:
            raise ValueError(
                f"Expected one result per (fold, seed), got two for {unit.fold, unit.seed}"
            )
        folds[unit.fold] = unit
    seeds = sorted(by_seed)
    fold_sets = {seed: set(folds) for seed, folds in by_seed.items()}
    reference = fold_sets[seeds[0]]
    for seed in seeds[1:]:
        if fold_sets[seed] != reference:
            raise ValueError(
                "Expected every seed to be run on the same folds, got folds "
                f"{_fold_list(reference)} for seed {seeds[0]} and "
                f"{_fold_list(fold_sets[seed])} for seed {seed}"
            )
    metric_sets = [set(unit.metrics) for unit in units]
    metrics = sorted(set.intersection(*metric_sets))
    dropped = sorted(set.union(*metric_sets) - set(metrics))
    if dropped:
        log.warning("Metrics missing from some units are left out: %s", ", ".join(dropped))

    per_seed = {
        seed: {
            metric: float(np.mean([unit.metrics[metric] for unit in by_seed[seed].values()]))
            for metric in metrics
        }
        for seed in seeds
    }
    mean, std = {}, {}
    for metric in metrics:
        values = np.array([per_seed[seed][metric] for seed in seeds], dtype=np.float64)
        mean[metric] = float(values.mean())
        std[metric] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return Summary(_fold_list(reference), seeds, metrics, units, per_seed, mean, std)


def _fold_list(folds: Iterable[int | None]) -> list[int | None]:
    return sorted(folds, key=lambda fold: -1 if fold is None else fold)


def is_percentage(metric: str) -> bool:
    """Whether a metric is a fraction shown in % (accuracy and F1, as in the paper's tables)."""
    return metric.rsplit("/", 1)[-1] in {"acc", "accuracy", "f1"}


def format_value(metric: str, value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{100 * value:.2f}" if is_percentage(metric) else f"{value:.4f}"


def format_mean_std(metric: str, mean: float, std: float) -> str:
    """``"93.97 ± 0.21"`` (accuracy/F1 in %, 2 decimals; others 4 decimals); no ± for NaN std."""
    if math.isnan(std):
        return format_value(metric, mean)
    return f"{format_value(metric, mean)} ± {format_value(metric, std)}"


def _metric_header(metric: str) -> str:
    return f"{metric} (%)" if is_percentage(metric) else metric


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _fold_name(fold: int | None) -> str:
    return "" if fold is None else str(fold)


def results_csv(summary: Summary) -> str:
    """The CSV text of :func:`write_results` (raw values, full precision)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["fold", "seed", *summary.metrics])
    for unit in summary.units:
        writer.writerow(
            [_fold_name(unit.fold), unit.seed, *(repr(unit.metrics[m]) for m in summary.metrics)]
        )
    for seed in summary.seeds:
        writer.writerow(["mean", seed, *(repr(summary.per_seed[seed][m]) for m in summary.metrics)])
    writer.writerow(["mean", "mean", *(repr(summary.mean[m]) for m in summary.metrics)])
    writer.writerow(["mean", "std", *(repr(summary.std[m]) for m in summary.metrics)])
    return buffer.getvalue()


def results_markdown(summary: Summary, title: str = "Results") -> str:
    """The Markdown text of :func:`write_results`: the summary table, then the per-fold table."""
    has_folds = summary.folds != [None]
    seeds = ", ".join(map(str, summary.seeds))
    if has_folds:
        folds = ", ".join(map(str, summary.folds))
        protocol = (
            f"For each seed, the mean over folds {folds}; then the mean ± sample standard "
            f"deviation (ddof=1) over the {len(summary.seeds)} seed(s) {seeds}."
        )
    else:
        protocol = (
            f"Mean ± sample standard deviation (ddof=1) over the {len(summary.seeds)} seed(s) "
            f"{seeds} (the dataset's official split, no folds)."
        )
    protocol += " Accuracy and F1 in %; n/a: undefined with one seed."
    summary_rows = [
        [
            _metric_header(metric),
            format_mean_std(metric, summary.mean[metric], summary.std[metric]),
            *(format_value(metric, summary.per_seed[seed][metric]) for seed in summary.seeds),
        ]
        for metric in summary.metrics
    ]
    seed_header = [f"seed {seed}" for seed in summary.seeds]
    text = f"# {title}\n\n{protocol}\n\n"
    text += markdown_table(["metric", "mean ± std", *seed_header], summary_rows)
    unit_rows = [
        [
            _fold_name(unit.fold),
            str(unit.seed),
            *(format_value(m, unit.metrics[m]) for m in summary.metrics),
        ]
        for unit in summary.units
    ]
    text += "\n## Per unit\n\n" if not has_folds else "\n## Per fold\n\n"
    text += markdown_table(["fold", "seed", *map(_metric_header, summary.metrics)], unit_rows)
    return text


def write_results(
    output: str | Path, summary: Summary, title: str = "Results"
) -> tuple[Path, Path]:
    """Writes ``<output>/results.csv`` and ``<output>/results.md`` atomically.

    ``results.csv`` has one row per unit (``fold``, ``seed``, then one column per metric), then
    one row per seed with ``fold = mean`` (the mean over folds), then the rows
    ``mean, mean`` and ``mean, std`` (over seeds). Values are raw fractions, not %.
    """
    output = Path(output)
    csv_path, md_path = output / "results.csv", output / "results.md"
    write_text_atomic(csv_path, results_csv(summary))
    write_text_atomic(md_path, results_markdown(summary, title))
    return csv_path, md_path


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
