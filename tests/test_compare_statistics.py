"""``add-lightning compare --baseline``: differences to a baseline row against scipy's tests.

The experiment folders are hand-built (``experiment.yaml`` and one ``test_metrics.json`` per
(fold, seed) unit, as ``cv`` writes them), so no model is trained.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from add_lightning import cli
from add_lightning.atomic import write_json_atomic
from add_lightning.experiments.config import config_hash
from add_lightning.experiments.runner import prepare_experiment
from add_lightning.experiments.statistics import holm

LOSSES = {
    "CE": None,
    "CE + OPL": {"class_path": "add_lightning.losses.OrthogonalProjectionLoss"},
    "CE + ADD (1,1,1,1)": {"class_path": "add_lightning.losses.ADDLoss"},
    "CE + ADD (1,0,1,0)": {
        "class_path": "add_lightning.losses.ADDLoss",
        "init_args": {"lambda_sigma_p": 0.0, "lambda_sigma_n": 0.0},
    },
}
ADD = "CE + ADD (1,1,1,1)"


def _config(loss: str) -> dict:
    model_args: dict = {"backbone": {"class_path": "add_lightning.models.ASTBackbone"}}
    if LOSSES[loss] is not None:
        model_args["loss"] = {
            "class_path": "add_lightning.losses.ClassificationLoss",
            "init_args": {"embedding": LOSSES[loss]},
        }
    return {
        "seed_everything": 0,
        "data": {
            "class_path": "add_lightning.data.AudioDataModule",
            "init_args": {"dataset": {"class_path": "add_lightning.data.datasets.ESC50"}},
        },
        "model": {"class_path": "add_lightning.models.AudioClassifier", "init_args": model_args},
    }


def _experiment(root: Path, loss: str, accuracy: dict[tuple[int | None, int], float]) -> Path:
    """An experiment folder of ``loss`` with ``test/acc`` per (fold, seed) unit."""
    directory = root / loss.replace(" ", "").replace("(", "_").replace(")", "").replace(",", "")
    config = _config(loss)
    prepare_experiment(directory, config)
    for (fold, seed), acc in accuracy.items():
        name = f"seed{seed}" if fold is None else f"fold{fold}_seed{seed}"
        write_json_atomic(
            directory / name / "test_metrics.json",
            {
                "config_hash": config_hash(config),
                "fold": fold,
                "seed": seed,
                "metrics": {"test/acc": acc},
            },
        )
    return directory


def _units(folds, seeds) -> list[tuple[int, int]]:
    return [(fold, seed) for seed in seeds for fold in folds]


def _compare(tmp_path, capsys, directories, *extra) -> tuple[str, list[dict]]:
    """Runs ``compare --baseline CE --statistics``; returns stdout and the CSV's rows."""
    output = tmp_path / "differences.csv"
    argv = ["compare", *map(str, directories), "--baseline", "CE", "--statistics", str(output)]
    assert cli.main([*argv, *extra]) == 0
    with output.open(encoding="utf-8") as file:
        return capsys.readouterr().out, list(csv.DictReader(file))


def _number(text: str) -> float | None:
    return None if text == "" else float(text)


def _cell(diff: float, low: float, high: float, p: float) -> str:
    return f"{100 * diff:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] p={p:.3f}"


def test_paired_two_folds_two_seeds_equals_scipy(tmp_path, capsys):
    units = _units([1, 2], [0, 1])
    baseline = np.array([0.80, 0.83, 0.78, 0.81])
    row = np.array([0.84, 0.85, 0.80, 0.86])
    directories = [
        _experiment(tmp_path, "CE", dict(zip(units, baseline, strict=True))),
        _experiment(tmp_path, ADD, dict(zip(units, row, strict=True))),
    ]
    out, (line,) = _compare(tmp_path, capsys, directories)

    reference = stats.ttest_rel(row, baseline)
    interval = reference.confidence_interval(0.95)
    assert (line["row"], line["baseline"], line["paired"]) == (ADD, "CE", "True")
    assert (int(line["n"]), int(line["n_baseline"])) == (4, 4)
    expected = {
        "diff": np.mean(row - baseline),
        "ci_low": interval.low,
        "ci_high": interval.high,
        "p_t": reference.pvalue,
        "p_t_holm": reference.pvalue,  # one row: nothing to correct
    }
    for key, value in expected.items():
        assert float(line[key]) == pytest.approx(value, rel=1e-12, abs=1e-12), key
    # 4 pairs: an exact Wilcoxon p-value cannot fall below 0.125, so none is reported.
    assert line["p_wilcoxon"] == line["p_wilcoxon_holm"] == line["note"] == ""
    # The mean ± std table is still there, the differences follow it.
    assert "| CE | 80.50 ± 1.41 |" in out
    cell = _cell(expected["diff"], interval.low, interval.high, reference.pvalue)
    assert f"| {ADD} | {cell} |" in out


@pytest.mark.parametrize(
    ("row_differences", "wilcoxon"),
    [
        ([0.0, 0.0, 0.02, 0.02, -0.01, 0.03, 0.01, 0.04], True),  # 6 non-zero, tied |d|
        ([0.0, 0.02, 0.02, -0.01, 0.03, 0.05], False),  # 5 non-zero: too few
    ],
    ids=["ties-and-zeros", "too-few-non-zero"],
)
def test_wilcoxon_with_zero_and_tied_differences_equals_scipy(
    tmp_path, capsys, row_differences, wilcoxon
):
    units = _units(range(len(row_differences) // 2), [0, 1])
    baseline = np.random.default_rng(0).uniform(0.6, 0.8, len(units))
    row = baseline + np.array(row_differences)
    directories = [
        _experiment(tmp_path, "CE", dict(zip(units, baseline, strict=True))),
        _experiment(tmp_path, ADD, dict(zip(units, row, strict=True))),
    ]
    _, (line,) = _compare(tmp_path, capsys, directories)

    assert float(line["p_t"]) == pytest.approx(stats.ttest_rel(row, baseline).pvalue, rel=1e-12)
    if wilcoxon:
        expected = stats.wilcoxon(row, baseline).pvalue
        assert float(line["p_wilcoxon"]) == pytest.approx(expected, rel=1e-12)
    else:
        assert line["p_wilcoxon"] == ""


def test_no_common_unit_is_compared_unpaired_by_welch(tmp_path, capsys):
    baseline = {(1, 0): 0.80, (2, 0): 0.83, (1, 1): 0.78, (2, 1): 0.81}
    row = {(3, 0): 0.84, (4, 0): 0.90, (5, 0): 0.80}  # other folds
    directories = [_experiment(tmp_path, "CE", baseline), _experiment(tmp_path, ADD, row)]
    out, (line,) = _compare(tmp_path, capsys, directories)

    reference = stats.ttest_ind(list(row.values()), list(baseline.values()), equal_var=False)
    interval = reference.confidence_interval(0.95)
    assert (line["paired"], int(line["n"]), int(line["n_baseline"])) == ("False", 3, 4)
    diff = np.mean(list(row.values())) - np.mean(list(baseline.values()))
    assert float(line["diff"]) == pytest.approx(diff, rel=1e-12)
    assert float(line["ci_low"]) == pytest.approx(interval.low, rel=1e-12)
    assert float(line["ci_high"]) == pytest.approx(interval.high, rel=1e-12)
    assert float(line["p_t"]) == pytest.approx(reference.pvalue, rel=1e-12)
    assert line["p_wilcoxon"] == ""
    cell = _cell(diff, interval.low, interval.high, reference.pvalue)
    assert f"{cell} (no common (fold, seed) unit: unpaired (Welch))" in out


def test_one_pair_has_no_interval_and_says_so(tmp_path, capsys):
    directories = [
        _experiment(tmp_path, "CE", {(None, 0): 0.80}),
        _experiment(tmp_path, ADD, {(None, 0): 0.8125}),
    ]
    out, (line,) = _compare(tmp_path, capsys, directories)

    assert int(line["n"]) == 1
    assert float(line["diff"]) == pytest.approx(0.0125, rel=1e-12)
    assert [line[key] for key in ("ci_low", "ci_high", "p_t", "p_t_holm")] == [""] * 4
    assert line["note"] == "n = 1: no interval"
    assert f"| {ADD} | +1.25 (n = 1: no interval) |" in out


def test_missing_units_pair_only_the_common_ones(tmp_path, capsys):
    rng = np.random.default_rng(1)
    baseline = dict(zip(_units([1, 2], [0, 1, 2]), rng.uniform(0.6, 0.8, 6), strict=True))
    row = dict(zip(_units([1, 2], [0, 1]), rng.uniform(0.6, 0.8, 4), strict=True))
    directories = [_experiment(tmp_path, "CE", baseline), _experiment(tmp_path, ADD, row)]
    out, (line,) = _compare(tmp_path, capsys, directories)

    common = list(row)
    reference = stats.ttest_rel([row[u] for u in common], [baseline[u] for u in common])
    assert (line["paired"], int(line["n"])) == ("True", 4)
    assert float(line["p_t"]) == pytest.approx(reference.pvalue, rel=1e-12)
    assert float(line["ci_low"]) == pytest.approx(reference.confidence_interval().low, rel=1e-12)
    assert line["note"] == "4 of 6 units paired"
    assert "(4 of 6 units paired) |" in out


def test_nan_metrics_drop_their_pairs_and_say_so(tmp_path, capsys):
    units = _units([1, 2], [0, 1])
    baseline = [0.80, 0.83, math.nan, 0.81]
    row = [0.84, 0.85, 0.80, 0.86]
    directories = [
        _experiment(tmp_path, "CE", dict(zip(units, baseline, strict=True))),
        _experiment(tmp_path, ADD, dict(zip(units, row, strict=True))),
    ]
    out, (line,) = _compare(tmp_path, capsys, directories)

    reference = stats.ttest_rel([0.84, 0.85, 0.86], [0.80, 0.83, 0.81])
    assert int(line["n"]) == 3
    assert float(line["diff"]) == pytest.approx(np.mean([0.04, 0.02, 0.05]), rel=1e-12)
    assert float(line["p_t"]) == pytest.approx(reference.pvalue, rel=1e-12)
    assert line["note"] == "1 pair(s) with NaN dropped"
    assert "(1 pair(s) with NaN dropped) |" in out


def test_holm_by_hand():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max so far 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.01]) == [pytest.approx(0.5), None, pytest.approx(0.02)]
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1


def test_holm_runs_over_the_rows_of_a_column(tmp_path, capsys):
    units = _units([1, 2], [0, 1, 2])
    rng = np.random.default_rng(2)
    baseline = rng.uniform(0.6, 0.8, len(units))
    rows = {
        ADD: baseline + rng.normal(0.03, 0.01, len(units)),
        "CE + ADD (1,0,1,0)": baseline + rng.normal(0.01, 0.02, len(units)),
        "CE + OPL": baseline + rng.normal(0.0, 0.02, len(units)),
    }
    directories = [_experiment(tmp_path, "CE", dict(zip(units, baseline, strict=True)))]
    directories += [
        _experiment(tmp_path, loss, dict(zip(units, values, strict=True)))
        for loss, values in rows.items()
    ]
    _, lines = _compare(tmp_path, capsys, directories)

    raw = [stats.ttest_rel(values, baseline).pvalue for values in rows.values()]
    # Holm by hand: the i-th smallest times (m - i), then the running maximum, capped at 1.
    order = np.argsort(raw)
    expected = np.empty(3)
    expected[order] = np.minimum(1, np.maximum.accumulate(np.sort(raw) * [3, 2, 1]))
    assert [line["row"] for line in lines] == list(rows)
    for line, p, p_holm in zip(lines, raw, expected, strict=True):
        assert float(line["p_t"]) == pytest.approx(p, rel=1e-12)
        assert float(line["p_t_holm"]) == pytest.approx(p_holm, rel=1e-12)
    wilcoxon = holm([stats.wilcoxon(values, baseline).pvalue for values in rows.values()])
    assert [float(line["p_wilcoxon_holm"]) for line in lines] == pytest.approx(wilcoxon)


def test_baseline_errors(tmp_path, capsys):
    directory = _experiment(tmp_path, "CE", {(1, 0): 0.8})
    assert cli.main(["compare", str(directory), "--baseline", "Focal"]) == 1
    assert "Expected argument `baseline` to be one of the rows ['CE'], got 'Focal'" in (
        capsys.readouterr().err
    )
    assert cli.main(["compare", str(directory), "--statistics", str(tmp_path / "s.csv")]) == 1
    assert "Expected --baseline ROW with --statistics" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


def test_equal_differences_have_no_t_test_and_say_so(tmp_path, capsys):
    units = _units([1, 2], [0])
    directories = [
        _experiment(tmp_path, "CE", dict(zip(units, [0.5, 0.25], strict=True))),
        _experiment(tmp_path, ADD, dict(zip(units, [0.75, 0.5], strict=True))),
    ]
    out, (line,) = _compare(tmp_path, capsys, directories)

    # scipy's t is 0.25 / 0 here: no p-value and no interval to report.
    assert [line[key] for key in ("ci_low", "ci_high", "p_t")] == [""] * 3
    assert f"| {ADD} | +25.00 (all differences equal: no t-test) |" in out
