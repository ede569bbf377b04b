"""Tests of the experiments runner, aggregation, comparison table and figures.

Aggregation and tables are checked against hand-computed numbers on fake result files; the
end-to-end tests run `add-lightning cv` on the synthetic dataset with a tiny AST on CPU.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from console_runs import console_output

from add_lightning.atomic import atomic_path, write_json_atomic, write_text_atomic
from add_lightning.experiments import cli
from add_lightning.experiments.aggregate import (
    UnitResult,
    aggregate,
    format_mean_std,
    load_unit_result,
    write_results,
)
from add_lightning.experiments.compare import compare_table, describe_experiment, describe_loss
from add_lightning.experiments.config import EXPERIMENT_FILENAME, ExperimentConfigError, config_hash
from add_lightning.experiments.figures import load_run_embeddings, make_figures, select_classes
from add_lightning.experiments.locks import hold_lock
from add_lightning.experiments.runner import (
    Unit,
    _claim_run_dir,
    _experiment_lock,
    plan_units,
    prepare_experiment,
    unit_is_finished,
)
from add_lightning.experiments.unit import RNGStateCheckpoint

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Hand-computed case: seeds 0, 1, 2 on folds 1, 2.
#   seed 0: (0.90 + 0.80) / 2 = 0.85; seed 1: (0.95 + 0.85) / 2 = 0.90;
#   seed 2: (0.70 + 0.90) / 2 = 0.80
#   mean over seeds 0.85; sample std sqrt((0 + 0.05² + 0.05²) / 2) = 0.05
#   (the population std would be sqrt(0.005 / 3) = 0.0408).
ACCURACY = {(1, 0): 0.90, (2, 0): 0.80, (1, 1): 0.95, (2, 1): 0.85, (1, 2): 0.70, (2, 2): 0.90}
# A second metric, mu_p, per unit: seed means 0.2, 0.3, 0.4 -> mean 0.3, sample std 0.1.
MU_P = {(1, 0): 0.1, (2, 0): 0.3, (1, 1): 0.3, (2, 1): 0.3, (1, 2): 0.5, (2, 2): 0.3}


def _results(accuracy=ACCURACY, mu_p=MU_P) -> list[UnitResult]:
    return [
        UnitResult(fold, seed, {"test/acc": acc, "test/geometry/mu_p": mu_p[(fold, seed)]}, "h")
        for (fold, seed), acc in accuracy.items()
    ]


# ---------------------------------------------------------------------------------- aggregation


def test_aggregate_mean_over_folds_then_sample_std_over_seeds():
    summary = aggregate(_results())
    assert summary.folds == [1, 2]
    assert summary.seeds == [0, 1, 2]
    assert summary.per_seed[0]["test/acc"] == pytest.approx(0.85)
    assert summary.per_seed[1]["test/acc"] == pytest.approx(0.90)
    assert summary.per_seed[2]["test/acc"] == pytest.approx(0.80)
    assert summary.mean["test/acc"] == pytest.approx(0.85)
    assert summary.std["test/acc"] == pytest.approx(0.05)
    assert summary.mean["test/geometry/mu_p"] == pytest.approx(0.3)
    assert summary.std["test/geometry/mu_p"] == pytest.approx(0.1)


def test_aggregate_without_folds_and_single_seed():
    summary = aggregate(
        [UnitResult(None, 3, {"test/acc": 0.5}), UnitResult(None, 4, {"test/acc": 0.7})]
    )
    assert summary.folds == [None]
    assert summary.mean["test/acc"] == pytest.approx(0.6)
    assert summary.std["test/acc"] == pytest.approx(math.sqrt(0.02))
    single = aggregate([UnitResult(1, 0, {"test/acc": 0.5}), UnitResult(2, 0, {"test/acc": 0.6})])
    assert single.mean["test/acc"] == pytest.approx(0.55)
    assert math.isnan(single.std["test/acc"])
    assert format_mean_std("test/acc", 0.55, math.nan) == "55.00"


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ([], "at least one unit"),
        ([UnitResult(1, 0, {"a": 1.0}), UnitResult(1, 0, {"a": 2.0})], "one result per"),
        (
            [
                UnitResult(1, 0, {"a": 1.0}),
                UnitResult(2, 0, {"a": 1.0}),
                UnitResult(1, 1, {"a": 1.0}),
            ],
            "same folds",
        ),
    ],
    ids=["empty", "duplicate-unit", "missing-fold"],
)
def test_aggregate_rejects_inconsistent_results(results, message):
    with pytest.raises(ValueError, match=message):
        aggregate(results)


def test_write_results_csv_and_markdown(tmp_path):
    csv_path, md_path = write_results(tmp_path, aggregate(_results()))
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 6 + 3 + 2  # units, per-seed means, mean and std over seeds
    by_key = {(row["fold"], row["seed"]): row for row in rows}
    assert float(by_key[("1", "2")]["test/acc"]) == pytest.approx(0.70)
    assert float(by_key[("mean", "1")]["test/acc"]) == pytest.approx(0.90)
    assert float(by_key[("mean", "mean")]["test/acc"]) == pytest.approx(0.85)
    assert float(by_key[("mean", "std")]["test/acc"]) == pytest.approx(0.05)
    text = md_path.read_text()
    assert "| test/acc (%) | 85.00 ± 5.00 | 85.00 | 90.00 | 80.00 |" in text
    assert "| test/geometry/mu_p | 0.3000 ± 0.1000 |" in text
    assert "ddof=1" in text
    assert "| 1 | 2 | 70.00 | 0.5000 |" in text  # the per-fold table
    assert not list(tmp_path.glob(".*tmp*"))


def test_load_unit_result_distrusts_damaged_files(tmp_path):
    path = tmp_path / "test_metrics.json"
    assert load_unit_result(path) is None
    full = json.dumps({"config_hash": "h", "fold": 1, "seed": 0, "metrics": {"test/acc": 0.5}})
    path.write_text(full[:-7])  # truncated
    assert load_unit_result(path) is None
    path.write_text(json.dumps({"fold": 1, "seed": 0, "metrics": {}}))  # no config hash
    assert load_unit_result(path) is None
    path.write_text(full)
    assert load_unit_result(path) == UnitResult(1, 0, {"test/acc": 0.5}, "h")
    assert not unit_is_finished(tmp_path, "h")  # the test embeddings are missing
    (tmp_path / "test_embeddings.npz").write_bytes(b"")
    assert unit_is_finished(tmp_path, "h")
    assert not unit_is_finished(tmp_path, "other")


# ----------------------------------------------------------------------------------- atomicity


def test_write_atomic_replaces_and_cleans_up(tmp_path):
    path = tmp_path / "a" / "result.json"
    write_json_atomic(path, {"x": 1})
    write_text_atomic(path, "new")
    assert path.read_text() == "new"
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("interrupted")
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]


def test_write_atomic_survives_kill_9(tmp_path):
    path = tmp_path / "result.txt"
    path.write_text("old")
    script = textwrap.dedent(
        f"""
        import os, signal
        from add_lightning.atomic import atomic_path
        with atomic_path({str(path)!r}) as tmp:
            with open(tmp, "w") as stream:
                stream.write("half of the new cont")
                stream.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    process = subprocess.run([sys.executable, "-c", script], check=False)
    assert process.returncode == -signal.SIGKILL
    assert path.read_text() == "old"


# ------------------------------------------------------------------------- planning, config


def _config(dataset: str = "ESC50", fold: int | None = 1, **loss) -> dict:
    data_args = {
        "dataset": {
            "class_path": f"add_lightning.data.datasets.{dataset}",
            "init_args": {"root": "x"},
        }
    }
    if fold != "absent":
        data_args["fold"] = fold
    return {
        "seed_everything": 0,
        "trainer": {"max_epochs": 2, "default_root_dir": None},
        "data": {"class_path": "add_lightning.data.AudioDataModule", "init_args": data_args},
        "model": {
            "class_path": "add_lightning.models.AudioClassifier",
            "init_args": {"backbone": {"class_path": "add_lightning.models.ASTBackbone"}, **loss},
        },
    }


def test_plan_units():
    assert plan_units(_config(), [1, 2], [0, 1]) == [Unit(1, 0), Unit(2, 0), Unit(1, 1), Unit(2, 1)]
    assert plan_units(_config(fold=3), None, [5]) == [Unit(3, 5)]
    assert plan_units(_config(fold=None), None, [0, 1]) == [Unit(None, 0), Unit(None, 1)]
    assert [u.name for u in plan_units(_config(fold=None), None, [0])] == ["seed0"]
    assert Unit(2, 1).name == "fold2_seed1"


@pytest.mark.parametrize(
    ("folds", "seeds", "fold", "message"),
    [
        ([1, 2], [0], "absent", "omit --folds"),
        ([1, 2], [0], None, "fold: null"),
        ([1, 1], [0], 1, "distinct"),
        ([1], [0, 0], 1, "distinct seeds"),
        ([1], [], 1, "distinct seeds"),
    ],
    ids=[
        "folds-without-fold-argument",
        "folds-for-official-split",
        "duplicate-folds",
        "duplicate-seeds",
        "no-seeds",
    ],
)
def test_plan_units_rejects_bad_requests(folds, seeds, fold, message):
    with pytest.raises(ExperimentConfigError, match=message):
        plan_units(_config(fold=fold), folds, seeds)


def test_config_hash_ignores_unit_entries():
    config = _config()
    other = _config(fold=4)
    other["seed_everything"] = 7
    other["trainer"]["default_root_dir"] = "elsewhere"
    assert config_hash(config) == config_hash(other)
    other["trainer"]["max_epochs"] = 3
    assert config_hash(config) != config_hash(other)


def test_prepare_experiment_refuses_another_config_unless_forced(tmp_path):
    first = _config()
    digest = prepare_experiment(tmp_path, first)
    assert prepare_experiment(tmp_path, first) == digest
    second = _config()
    second["trainer"]["max_epochs"] = 5
    with pytest.raises(ExperimentConfigError, match="--force"):
        prepare_experiment(tmp_path, second)
    assert config_hash(yaml.safe_load((tmp_path / EXPERIMENT_FILENAME).read_text())) == digest
    assert prepare_experiment(tmp_path, second, force=True) == config_hash(second)


def test_rng_state_checkpoint_round_trip(tmp_path):
    callback = RNGStateCheckpoint()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)  # noqa: NPY002
    path = tmp_path / "state.pt"
    torch.save(callback.state_dict(), path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    random.seed(9), np.random.seed(9), torch.manual_seed(9)  # noqa: NPY002
    callback.load_state_dict(torch.load(path, weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected  # noqa: NPY002


def test_cv_parser_passes_unknown_arguments_to_fit():
    argv = ["cv", "--config", "a.yaml", "--config", "b.yaml", "--output", "out", "--fold", "2"]
    argv += ["--trainer.max_epochs", "2", "--seeds", "3", "4"]
    args, overrides = cli.build_parser().parse_known_args(argv)
    assert args.config == [Path("a.yaml"), Path("b.yaml")]
    assert (args.folds, args.seeds, args.force) == (None, [3, 4], False)
    assert overrides == ["--fold", "2", "--trainer.max_epochs", "2"]  # not --folds abbreviated


# ------------------------------------------------------------------------------------- compare

CE = {"class_path": "add_lightning.losses.ClassificationLoss"}
ADD = {
    "class_path": "add_lightning.losses.ClassificationLoss",
    "init_args": {
        "classifier": {"class_path": "add_lightning.losses.CrossEntropyLoss"},
        "embedding": {
            "class_path": "add_lightning.losses.ADDLoss",
            "init_args": {
                "lambda_mu_p": 1.0,
                "lambda_sigma_p": 0.0,
                "lambda_mu_n": 1.0,
                "lambda_sigma_n": 0,
            },
        },
    },
}


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        (None, "CE"),
        (CE, "CE"),
        (
            {**CE, "init_args": {"classifier": {"class_path": "add_lightning.losses.FocalLoss"}}},
            "Focal",
        ),
        (
            {
                **CE,
                "init_args": {
                    "embedding": {"class_path": "add_lightning.losses.OrthogonalProjectionLoss"}
                },
            },
            "CE + OPL",
        ),
        (ADD, "CE + ADD (1,0,1,0)"),
    ],
    ids=["default", "ce", "focal", "opl", "add"],
)
def test_describe_loss(loss, expected):
    assert describe_loss(loss) == expected


def test_describe_experiment_names_datasets_as_the_paper():
    key = describe_experiment(_config("SpeechCommands", loss=ADD))
    assert (key.dataset, key.backbone, key.loss) == ("KS2", "AST", "CE + ADD (1,0,1,0)")
    assert describe_experiment(_config("IEMOCAP")).column == "ER AST"


def _fake_experiment(root: Path, name: str, config: dict, accuracy: dict) -> Path:
    directory = root / name
    prepare_experiment(directory, config)
    digest = config_hash(config)
    for (fold, seed), acc in accuracy.items():
        write_json_atomic(
            directory / Unit(fold, seed).name / "test_metrics.json",
            {"config_hash": digest, "fold": fold, "seed": seed, "metrics": {"test/acc": acc}},
        )
    return directory


def test_compare_table_bolds_the_best_of_each_column(tmp_path):
    low = {key: value - 0.1 for key, value in ACCURACY.items()}  # 75.00 ± 5.00
    dirs = [
        _fake_experiment(tmp_path, "esc_ce", _config("ESC50", loss=CE), low),
        _fake_experiment(tmp_path, "esc_add", _config("ESC50", loss=ADD), ACCURACY),
        _fake_experiment(tmp_path, "er_ce", _config("IEMOCAP", loss=CE), ACCURACY),
        _fake_experiment(tmp_path, "er_add", _config("IEMOCAP", loss=ADD), ACCURACY),
        _fake_experiment(
            tmp_path, "ks_ce", _config("SpeechCommands", fold=None, loss=CE), {(None, 0): 0.5}
        ),
    ]
    table = compare_table(dirs)
    lines = table.splitlines()
    assert lines[2] == "| loss | ESC-50 AST | ER AST | KS2 AST |"
    assert lines[4] == "| CE | 75.00 ± 5.00 | **85.00 ± 5.00** | **50.00** |"
    assert lines[5] == "| CE + ADD (1,0,1,0) | **85.00 ± 5.00** | **85.00 ± 5.00** | - |"
    lowest = compare_table(dirs[:2], higher_is_better=False).splitlines()
    assert lowest[4] == "| CE | **75.00 ± 5.00** |"


def test_compare_table_puts_several_metrics_side_by_side(tmp_path):
    def experiment(name: str, loss: dict, shift: float) -> Path:
        directory = _fake_experiment(tmp_path, name, _config("ESC50", loss=loss), ACCURACY)
        for (fold, seed), acc in ACCURACY.items():
            metrics = {"test/acc": acc + shift, "test/geometry/mu_p": MU_P[(fold, seed)] + shift}
            write_json_atomic(
                directory / Unit(fold, seed).name / "test_metrics.json",
                {
                    "config_hash": config_hash(_config("ESC50", loss=loss)),
                    "fold": fold,
                    "seed": seed,
                    "metrics": metrics,
                },
            )
        return directory

    dirs = [experiment("ce", CE, -0.1), experiment("add", ADD, 0.0)]
    lines = compare_table(dirs, ["test/acc", "test/geometry/mu_p"]).splitlines()
    assert "lowest for test/geometry/mu_p, highest for the others" in lines[0]
    assert lines[2] == "| loss | test/acc (%) | test/geometry/mu_p |"
    # acc: 75.00 ± 5.00 vs 85.00 ± 5.00 (highest bold); mu_p: 0.2 ± 0.1 vs 0.3 ± 0.1 (lowest).
    assert lines[4] == "| CE | 75.00 ± 5.00 | **0.2000 ± 0.1000** |"
    assert lines[5] == "| CE + ADD (1,0,1,0) | **85.00 ± 5.00** | 0.3000 ± 0.1000 |"
    ks2 = _fake_experiment(
        tmp_path, "ks_ce", _config("SpeechCommands", fold=None, loss=CE), {(None, 0): 0.5}
    )
    with pytest.raises(ValueError, match="`test/geometry/mu_p` in the results of"):
        compare_table([*dirs, ks2], ["test/acc", "test/geometry/mu_p"])
    with pytest.raises(ValueError, match="distinct metrics"):
        compare_table(dirs, ["test/acc", "test/acc"])
    assert cli.main(["compare", *map(str, dirs), "--metric", "test/acc", "test/geometry/mu_p"]) == 0


def test_compare_errors(tmp_path):
    one = _fake_experiment(tmp_path, "one", _config(loss=CE), {(1, 0): 0.5})
    two = _fake_experiment(tmp_path, "two", _config(loss=CE, freeze_backbone=True), {(1, 0): 0.6})
    with pytest.raises(ValueError, match="one experiment per"):
        compare_table([one, two])
    with pytest.raises(FileNotFoundError, match=r"experiment\.yaml"):
        compare_table([tmp_path / "missing"])
    with pytest.raises(ValueError, match="test/f1"):
        compare_table([one], metric="test/f1")
    empty = tmp_path / "empty"
    prepare_experiment(empty, _config())
    with pytest.raises(ValueError, match="found none"):
        compare_table([empty])


def test_cli_compare_writes_table_and_reports_errors(tmp_path, capsys):
    directory = _fake_experiment(tmp_path, "esc_add", _config(loss=ADD), ACCURACY)
    output = tmp_path / "table.md"
    assert cli.main(["compare", str(directory), "--output", str(output)]) == 0
    assert "**85.00 ± 5.00**" in output.read_text()
    assert output.read_text() in capsys.readouterr().out
    assert cli.main(["compare", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["compare", str(directory), "--unknown"])


# ------------------------------------------------------------------------------------- figures


def _fake_embeddings(path: Path, num_classes: int = 4, per_class: int = 5, seed: int = 0) -> Path:
    generator = np.random.default_rng(seed)
    targets = np.repeat(np.arange(num_classes), per_class).astype(np.int64)
    centres = generator.normal(size=(num_classes, 8))
    embeddings = (centres[targets] + 0.3 * generator.normal(size=(len(targets), 8))).astype(
        np.float32
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        embeddings=embeddings,
        logits=generator.normal(size=(len(targets), num_classes)).astype(np.float32),
        targets=targets,
        clip_ids=np.array([f"clip{i}" for i in range(len(targets))]),
        class_names=np.array([f"class_{k}" for k in range(num_classes)]),
    )
    return path


def _class_pair_mean_distance(path: Path, a: int, b: int) -> float:
    """Mean cosine distance over the ordered pairs (i in a, j in b, i != j), in float64;
    NaN without such a pair (drawn blank)."""
    with np.load(path) as run:
        embeddings, targets = run["embeddings"].astype(np.float64), run["targets"]
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    d = [
        1.0 - unit[i] @ unit[j]
        for i in np.flatnonzero(targets == a)
        for j in np.flatnonzero(targets == b)
        if i != j
    ]
    return float(np.mean(d)) if d else math.nan


def test_figures_write_two_pngs(tmp_path, monkeypatch):
    from add_lightning.experiments import figures

    drawn = []  # the heat-map figure's mean-of-d images, as drawn (column = run)
    save_figure = figures.save_figure

    def recording(figure, path, dpi=150):
        drawn.append([image.get_array() for axes in figure.axes for image in axes.images])
        return save_figure(figure, path, dpi)

    monkeypatch.setattr(figures, "save_figure", recording)
    run_dir = tmp_path / "exp" / "fold1_seed0"
    _fake_embeddings(run_dir / "test_embeddings.npz")
    other = _fake_embeddings(tmp_path / "other.npz", seed=1)
    output = tmp_path / "figs" / "geometry.png"
    heatmaps, properties = make_figures([run_dir, other], output, classes=3)
    assert heatmaps == output and properties == tmp_path / "figs" / "geometry_properties.png"
    for path in (heatmaps, properties):
        assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert load_run_embeddings(run_dir).label == "exp/fold1_seed0"
    assert load_run_embeddings(other).label == "other"
    # the first 3 of the 4 classes, one column per run, each the float64 reference
    for image, path in zip(drawn[0][:2], [run_dir / "test_embeddings.npz", other], strict=True):
        expected = [[_class_pair_mean_distance(path, a, b) for b in range(3)] for a in range(3)]
        np.testing.assert_allclose(image, expected, rtol=1e-5)

    # explicit class ids; class 3 cut to one clip has no same-class pair: drawn blank, not 0
    with np.load(other) as run:
        arrays = dict(run)
    keep = arrays["targets"] != 3
    keep[np.flatnonzero(~keep)[0]] = True
    for key in ("embeddings", "logits", "targets", "clip_ids"):
        arrays[key] = arrays[key][keep]
    single = tmp_path / "single.npz"
    np.savez(single, **arrays)
    drawn.clear()
    output = tmp_path / "c.png"
    assert cli.main(["figures", str(single), "--class-ids", "0", "3", "--output", str(output)]) == 0
    assert (tmp_path / "c_properties.png").read_bytes()[:8] == PNG_SIGNATURE
    image = drawn[0][0]
    assert image.mask.tolist() == [[False, False], [False, True]]
    expected = [[_class_pair_mean_distance(single, a, b) for b in (0, 3)] for a in (0, 3)]
    np.testing.assert_allclose(image.filled(np.nan), expected, rtol=1e-5)


def test_figures_errors(tmp_path):
    good = _fake_embeddings(tmp_path / "good.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run_embeddings(tmp_path / "missing")
    np.savez(tmp_path / "bad.npz", embeddings=np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="missing"):
        load_run_embeddings(tmp_path / "bad.npz")
    np.savez(
        tmp_path / "range.npz",
        embeddings=np.zeros((2, 3)),
        targets=np.array([0, 5]),
        class_names=np.array(["a", "b"]),
    )
    with pytest.raises(ValueError, match="targets"):
        load_run_embeddings(tmp_path / "range.npz")
    five = _fake_embeddings(tmp_path / "five.npz", num_classes=5)
    with pytest.raises(ValueError, match="share one set of classes"):
        make_figures([good, five], tmp_path / "x.png")
    with pytest.raises(ValueError, match="one label per run"):
        make_figures([good], tmp_path / "x.png", labels=["a", "b"])
    with pytest.raises(ValueError, match="class_ids"):
        select_classes(4, class_ids=[0, 4])
    with pytest.raises(ValueError, match="positive"):
        select_classes(4, first=0)
    assert select_classes(4, first=10) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------ end to end


UNITS = ("fold1_seed0", "fold2_seed0", "fold1_seed1", "fold2_seed1")


SEED0 = UNITS[:2]  # the units of `--seeds 0`


def _cv_args(config: Path, output: Path, seeds: tuple[str, ...] = ("0", "1")) -> list[str]:
    folds = ["--folds", "1", "2"]
    return ["cv", "--config", str(config), *folds, "--seeds", *seeds, "--output", str(output)]


def _same_unit_metrics(output: Path, reference: Path, names: tuple[str, ...]) -> None:
    """The units ``names`` of ``output`` have exactly the test metrics of ``reference``'s."""
    for name in names:
        ours = json.loads((output / name / "test_metrics.json").read_text())["metrics"]
        assert ours == json.loads((reference / name / "test_metrics.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def tiny_config(serial_cv) -> Path:
    return serial_cv["config"]


@pytest.fixture(scope="module")
def uninterrupted(serial_cv) -> Path:
    """An uninterrupted `add-lightning cv` of 2 folds x 2 seeds (conftest's serial_cv)."""
    return serial_cv["output"]


def test_cv_runs_every_fold_and_seed(uninterrupted, tmp_path):
    for name in UNITS:
        run_dir = uninterrupted / name
        for file in (
            "config.yaml",
            "checkpoints/last.ckpt",
            "test_metrics.json",
            "test_embeddings.npz",
        ):
            assert (run_dir / file).is_file(), file
        assert list(run_dir.glob("events.out.tfevents.*"))
        run = load_run_embeddings(run_dir)
        assert run.embeddings.shape == (6, 32) and len(run.class_names) == 3
    # The table against a re-statement of the protocol on the units' own numbers.
    accuracy = {
        name: json.loads((uninterrupted / name / "test_metrics.json").read_text())["metrics"][
            "test/acc"
        ]
        for name in UNITS
    }
    per_seed = [
        (accuracy["fold1_seed0"] + accuracy["fold2_seed0"]) / 2,
        (accuracy["fold1_seed1"] + accuracy["fold2_seed1"]) / 2,
    ]
    rows = {
        (row["fold"], row["seed"]): row
        for row in csv.DictReader((uninterrupted / "results.csv").open())
    }
    assert float(rows[("mean", "mean")]["test/acc"]) == pytest.approx(sum(per_seed) / 2)
    assert float(rows[("mean", "std")]["test/acc"]) == pytest.approx(
        abs(per_seed[0] - per_seed[1]) / math.sqrt(2)
    )
    assert "test/geometry/mu_p" in rows[("mean", "mean")]
    assert (uninterrupted / "results.md").read_text().startswith("# Results: uninterrupted")
    heatmaps, properties = make_figures(
        [uninterrupted / name for name in UNITS[:2]], tmp_path / "fig.png"
    )
    assert heatmaps.read_bytes()[:8] == properties.read_bytes()[:8] == PNG_SIGNATURE


def test_cv_rerun_skips_finished_units_and_refuses_another_config(
    uninterrupted, tiny_config, tmp_path, capsys
):
    # a copy of the shared run (copytree keeps the times): a rerun must not change the reference
    uninterrupted = shutil.copytree(uninterrupted, tmp_path / "rerun")
    stamps = {
        name: (uninterrupted / name / "test_metrics.json").stat().st_mtime_ns for name in UNITS
    }
    assert cli.main(_cv_args(tiny_config, uninterrupted)) == 0
    assert stamps == {
        name: (uninterrupted / name / "test_metrics.json").stat().st_mtime_ns for name in UNITS
    }
    capsys.readouterr()
    assert cli.main([*_cv_args(tiny_config, uninterrupted), "--trainer.max_epochs", "3"]) == 1
    assert "--force" in capsys.readouterr().err


def test_cv_rerun_with_fewer_folds_and_seeds_keeps_the_whole_table(
    uninterrupted, tiny_config, tmp_path
):
    table = (uninterrupted / "results.csv").read_text()
    uninterrupted = shutil.copytree(uninterrupted, tmp_path / "rerun")  # the reference stays
    subset = [*_cv_args(tiny_config, uninterrupted)[:3], "--folds", "1", "--seeds", "0"]
    subset += ["--output", str(uninterrupted)]
    assert cli.main(subset) == 0
    assert (uninterrupted / "results.csv").read_text() == table


def test_cv_regenerates_deleted_test_embeddings(uninterrupted, tiny_config, tmp_path):
    output = tmp_path / "copy"
    shutil.copytree(uninterrupted, output)
    (output / "fold2_seed1" / "test_embeddings.npz").unlink()
    metrics = (output / "fold2_seed1" / "test_metrics.json").read_text()
    assert not unit_is_finished(output / "fold2_seed1", config_hash(_experiment(output)))
    assert cli.main(_cv_args(tiny_config, output)) == 0
    assert (output / "fold2_seed1" / "test_embeddings.npz").is_file()
    # resumed from the final checkpoint: no training, the same test numbers
    assert json.loads((output / "fold2_seed1" / "test_metrics.json").read_text()) == json.loads(
        metrics
    )
    assert (output / "results.csv").read_text() == (uninterrupted / "results.csv").read_text()


def _experiment(output: Path) -> dict:
    return yaml.safe_load((output / EXPERIMENT_FILENAME).read_text())


def test_unit_stopped_by_sigterm_is_a_failure(monkeypatch, tmp_path):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from add_lightning.experiments import unit as unit_module

    def stopped(*args, **kwargs):
        raise SIGTERMException  # what Lightning raises on SIGTERM: SystemExit with status 0

    monkeypatch.setattr(unit_module, "run_unit", stopped)
    arguments = ["--experiment", "e.yaml", "--run-dir", str(tmp_path), "--seed", "0"]
    assert unit_module.main([*arguments, "--config-hash", "h"]) == 128 + signal.SIGTERM


@pytest.mark.parametrize("how", ["status-143", "killed"])
def test_cv_names_the_signal_that_stopped_a_unit(monkeypatch, tiny_config, tmp_path, capsys, how):
    from add_lightning.experiments import launchers

    # The unit's own report of SIGTERM (128 + 15), or a process the signal killed.
    code = "raise SystemExit(143)" if how == "status-143" else "import os; os.kill(os.getpid(), 15)"
    monkeypatch.setattr(
        launchers.LocalBackend, "_command", lambda self, task: [sys.executable, "-c", code]
    )
    assert cli.main(_cv_args(tiny_config, tmp_path / "out")) != 0
    err = capsys.readouterr().err
    assert "fold1_seed0 was interrupted by signal SIGTERM" in err
    assert str(tmp_path / "out" / "fold1_seed0" / "unit.log") in err


def test_cv_killed_and_rerun_equals_uninterrupted(uninterrupted, tiny_config, tmp_path, capfd):
    # 2 units (seed 0): the runner is killed while the second trains, after the first finished
    output = tmp_path / "killed"
    args = _cv_args(tiny_config, output, seeds=("0",))
    command = [sys.executable, "-m", "add_lightning.experiments.cli", *args]
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 900  # a guard against hanging, not a timing assertion
    try:
        while time.monotonic() < deadline and process.poll() is None:
            finished = [name for name in SEED0 if (output / name / "test_metrics.json").exists()]
            running = [
                name
                for name in SEED0
                if name not in finished and (output / name / "checkpoints" / "last.ckpt").exists()
            ]
            if finished and running:
                break
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the runner and its unit process
        process.wait()
    assert finished and running, "the runner ended before it could be killed inside a unit"
    assert not (output / "results.csv").exists()
    kept = {name: (output / name / "test_metrics.json").read_bytes() for name in finished}
    stamps = {
        name: (output / name / "checkpoints" / "last.ckpt").stat().st_mtime_ns for name in finished
    }

    capfd.readouterr()
    assert cli.main(args) == 0
    assert f"Resuming {running[0]} from" in capfd.readouterr().err
    for name in finished:  # not retrained
        assert (output / name / "test_metrics.json").read_bytes() == kept[name]
        assert (output / name / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamps[name]
    # the killed fit, the resumed one and the test each wrote an event file
    assert _run_counts(output)[running[0]] == _run_counts(uninterrupted)[running[0]] + 1
    _same_unit_metrics(output, uninterrupted, SEED0)
    # the table of seed 0 alone: each fold's numbers, and their mean
    rows = {(r["fold"], r["seed"]): r for r in csv.DictReader((output / "results.csv").open())}
    accuracy = [
        json.loads((uninterrupted / n / "test_metrics.json").read_text())["metrics"]["test/acc"]
        for n in SEED0
    ]
    assert float(rows[("mean", "mean")]["test/acc"]) == pytest.approx(sum(accuracy) / 2)
    assert (output / "results.md").read_text().startswith("# Results: killed")


def test_cv_reports_user_errors(tiny_config, tmp_path, capsys):
    # An option that does not parse: refused before anything runs.
    assert cli.main([*_cv_args(tiny_config, tmp_path / "a"), "--trainer.no_such_option", "1"]) == 2
    assert "does not parse" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    # Another runner holds the directory.
    locked = tmp_path / "locked"
    locked.mkdir()
    with _experiment_lock(locked):
        assert cli.main(_cv_args(tiny_config, locked)) == 75  # busy: try again later
    assert "Another `add-lightning cv` is running" in capsys.readouterr().err
    # A value that parses but fails when the unit builds its data module: the unit's error is
    # shown, the runner stops with status 1 and writes no table.
    output = tmp_path / "b"
    args = [*_cv_args(tiny_config, output), "--data.init_args.batch_size", "0"]
    assert cli.main(args) == 1
    assert "Unit fold1_seed0 failed" in capsys.readouterr().err
    assert (output / EXPERIMENT_FILENAME).is_file() and not (output / "results.csv").exists()


def test_claim_run_dir_protects_other_experiments(tmp_path):
    run_dir = tmp_path / "fold1_seed0"
    _claim_run_dir(run_dir, Unit(1, 0), "old", force=False)
    (run_dir / "checkpoints").mkdir()
    _claim_run_dir(run_dir, Unit(1, 0), "old", force=False)  # its own: kept
    assert (run_dir / "checkpoints").is_dir()
    with pytest.raises(ExperimentConfigError, match="--force"):
        _claim_run_dir(run_dir, Unit(1, 0), "new", force=False)
    _claim_run_dir(run_dir, Unit(1, 0), "new", force=True)
    assert not (run_dir / "checkpoints").exists()
    assert json.loads((run_dir / "unit.json").read_text())["config_hash"] == "new"
    (run_dir / "checkpoints").mkdir()
    with hold_lock(run_dir), pytest.raises(ExperimentConfigError, match="a worker holds"):
        _claim_run_dir(run_dir, Unit(1, 0), "newer", force=True)  # never cleared under a worker
    assert (run_dir / "checkpoints").is_dir()


def test_clearing_a_folder_keeps_its_held_lock_and_what_links_point_to(tmp_path):
    from add_lightning.experiments.locks import clear_besides_lock, files_besides_lock, lock_is_free

    folder, outside = tmp_path / "trial3", tmp_path / "outside"
    (outside / "data").mkdir(parents=True)
    assert files_besides_lock(folder) == []  # not there yet
    with hold_lock(folder):
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
        (folder / "unit.json").write_text("{}")
        (folder / "link").symlink_to(outside, target_is_directory=True)
        assert len(files_besides_lock(folder)) == 3
        clear_besides_lock(folder)
        assert [path.name for path in folder.iterdir()] == [".lock"]
        assert not lock_is_free(folder) and (outside / "data").is_dir()


def test_a_launcher_waits_for_another_launchers_claim_of_the_same_unit(tmp_path):
    """Two launchers sharing an experiment claim its units at the same moment: the second
    must wait for the first's ``unit.json``, not take its temporary file (written next to it,
    then renamed) for the files of another experiment. It did, about once in 40 claims."""
    import threading

    run_dir = tmp_path / "fold1_seed0"
    errors: list[Exception] = []

    def claim() -> None:
        try:
            _claim_run_dir(run_dir, Unit(1, 0), "abc", force=False)
        except Exception as error:  # reported by the assertion below
            errors.append(error)

    second = threading.Thread(target=claim)
    with hold_lock(run_dir):  # the first launcher, writing unit.json
        with atomic_path(run_dir / "unit.json") as temporary:
            temporary.write_text(json.dumps({"config_hash": "abc", "fold": 1, "seed": 0}))
            second.start()
            second.join(0.5)
            assert second.is_alive()  # waits for the lock
    second.join(30)
    assert not second.is_alive() and errors == []
    assert json.loads((run_dir / "unit.json").read_text())["config_hash"] == "abc"


# ------------------------------------------------------------------- launchers and parallelism


def _run_counts(output: Path) -> dict[str, int]:
    """TensorBoard event files per unit: each fit or test writes one, so a unit trained a second
    time (or resumed) has more than the same unit of an uninterrupted run."""
    return {name: len(list((output / name).glob("events.out.tfevents.*"))) for name in UNITS}


def test_cv_parallel_killed_and_rerun_through_submitit_equals_serial(
    uninterrupted, tiny_config, tmp_path, caplog
):
    """Two units at a time (`--max-parallel 2`), the launcher killed after a unit finished, the
    rest run by submitit's local executor: every unit has the serial run's numbers, and no
    finished unit is trained again. Byte-equal to the serial run because OMP_NUM_THREADS is set
    (conftest): parallel units keep the serial run's threads."""
    output = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "add_lightning.experiments.cli",
        *_cv_args(tiny_config, output),
        "--max-parallel",
        "2",
    ]
    log = tmp_path / "launcher.log"
    with log.open("w") as stream:
        process = subprocess.Popen(
            command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stream
        )
    deadline = time.monotonic() + 900  # a guard against hanging, not a timing assertion
    finished: list[str] = []
    try:
        while time.monotonic() < deadline and process.poll() is None:
            finished = [name for name in UNITS if (output / name / "test_metrics.json").exists()]
            if finished and len(finished) < len(UNITS):
                break
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and its unit processes
        process.wait()
    assert finished and len(finished) < len(UNITS), "the launcher ended before it was killed"
    assert not (output / "results.csv").exists()
    text = log.read_text()
    assert "[queued 2 · running 2 · finished 0 · failed 0] fold2_seed0: running" in text, text
    assert f"fold1_seed0: running (log {output / 'fold1_seed0' / 'unit.log'})" in text
    kept = {name: (output / name / "test_metrics.json").read_bytes() for name in finished}

    caplog.set_level("INFO")
    argv = [*_cv_args(tiny_config, output), "--launcher", "submitit-local", "--max-parallel", "2"]
    assert cli.main(argv) == 0
    assert "[queued 0 · running 0 · finished 4 · failed 0]" in caplog.text
    for name in finished:  # not retrained
        assert (output / name / "test_metrics.json").read_bytes() == kept[name]
        assert _run_counts(output)[name] == _run_counts(uninterrupted)[name]
        assert (output / name / "unit.log").read_text().startswith("==== ")  # the local launcher's
    # one submitit job (and its log) for each unit the killed launcher left unfinished
    assert len(list((output / ".submitit").glob("*_log.err"))) == len(UNITS) - len(finished)
    assert (output / "results.csv").read_bytes() == (uninterrupted / "results.csv").read_bytes()


def test_two_launchers_share_an_experiment_without_training_a_unit_twice(
    uninterrupted, tiny_config, tmp_path
):
    output = tmp_path / "shared"
    command = [
        sys.executable,
        "-m",
        "add_lightning.experiments.cli",
        *_cv_args(tiny_config, output, seeds=("0",)),
    ]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    processes = [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("w")) for log in logs
    ]
    statuses = [process.wait(timeout=900) for process in processes]
    assert statuses == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    counts = _run_counts(output)
    # each unit trained exactly once
    assert {name: counts[name] for name in SEED0} == {
        name: _run_counts(uninterrupted)[name] for name in SEED0
    }
    texts = [log.read_text() for log in logs]
    assert not any("Resuming" in text for text in texts)
    for text in texts:  # each launcher waited for all units and wrote the whole table
        assert "[queued 0 · running 0 · finished 2 · failed 0]" in text
    rows = {(r["fold"], r["seed"]) for r in csv.DictReader((output / "results.csv").open())}
    assert {("1", "0"), ("2", "0"), ("mean", "mean")} <= rows
    _same_unit_metrics(output, uninterrupted, SEED0)


def test_sweep_of_variants_makes_one_experiment_each_and_compare_reads_them(
    uninterrupted, tiny_config, tmp_path, capsys, caplog, monkeypatch
):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the 2 units divide the threads
    caplog.set_level("INFO")
    variants = tmp_path / "variants.yaml"
    variants.write_text(
        "base: {folds: [1], seeds: [0]}\n"  # the config of `uninterrupted`: the same numbers
        "no_sigma_n:\n"
        "  folds: [1]\n"
        "  seeds: [0]\n"
        "  overrides: {model.init_args.loss.init_args.embedding.init_args.lambda_sigma_n: 0.0}\n"
    )
    output = tmp_path / "sweep"
    argv = [*_cv_args(tiny_config, output), "--variants", str(variants), "--max-parallel", "2"]
    assert cli.main(argv) == 0
    assert yaml.safe_load((output / "sweep.yaml").read_text()) == {
        "experiments": ["base", "no_sigma_n"]
    }
    assert sorted(path.name for path in (output / "base").glob("fold*")) == ["fold1_seed0"]
    ours = json.loads((output / "base" / "fold1_seed0" / "test_metrics.json").read_text())
    reference = json.loads((uninterrupted / "fold1_seed0" / "test_metrics.json").read_text())
    # Threads divided between the 2 units (2 cores: 1 each, as the serial run's units here):
    # the same numbers up to the rounding of reductions where the cores are more.
    assert ours["metrics"] == pytest.approx(reference["metrics"], rel=1e-5, abs=1e-7)
    assert "base/fold1_seed0: running with" in caplog.text and "thread(s)" in caplog.text
    other = _experiment(output / "no_sigma_n")["model"]["init_args"]["loss"]["init_args"]
    assert other["embedding"]["init_args"]["lambda_sigma_n"] == 0.0
    capsys.readouterr()
    assert cli.main(["compare", str(output)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[0] for line in table[4:]] == [
        "| CE + ADD (1,1,1,1)",
        "| CE + ADD (1,1,1,0)",
    ]


def test_unit_job_requeued_after_preemption_resumes(uninterrupted, tiny_config, tmp_path):
    """A simulated preemption (submitit's timeout signal) of a unit in submitit's local
    executor: the job is requeued, resumes from last.ckpt and gives the uninterrupted result."""
    import submitit

    from add_lightning.experiments.config import compose_config
    from add_lightning.experiments.launchers import Task, UnitJob

    output = tmp_path / "preempted"
    config = compose_config([tiny_config])
    digest = prepare_experiment(output, config)
    _claim_run_dir(output / "fold1_seed0", Unit(1, 0), digest, force=False)
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="local")
    executor.update_parameters(timeout_min=60)
    job = executor.submit(UnitJob(Task(output, digest, 1, 0, "fold1_seed0")))
    checkpoint = output / "fold1_seed0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600  # a guard against hanging, not a timing assertion
    while not checkpoint.exists() and not job.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not job.done(), "the unit ended before it could be preempted"
    # SLURM's signal before a timeout or preemption, to the job's task (the controller of
    # submitit's local executor forwards only SIGTERM).
    (task_pid,) = (
        Path(f"/proc/{job._process.pid}/task/{job._process.pid}/children").read_text().split()
    )
    os.kill(int(task_pid), signal.SIGUSR2)
    assert job.result() == 0
    log_text = Path(job.paths.stderr).read_text()
    assert "requeued" in log_text.lower() and "Resuming fold1_seed0 from" in log_text
    ours = json.loads((output / "fold1_seed0" / "test_metrics.json").read_text())
    reference = json.loads((uninterrupted / "fold1_seed0" / "test_metrics.json").read_text())
    assert ours["metrics"] == reference["metrics"]


def test_a_signal_handlers_exit_is_raised_at_the_next_batch_end(tmp_path):
    """submitit's preemption handler raises SystemExit wherever the main thread is (inside
    TensorBoard's queue put it lost the writer's wake-up, and the exit then waited for the
    writer's 120-s flush). Under ExitAtBatchEnd the handler runs when the signal comes, its exit
    at the end of the batch it came in; outside a trainer at once."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel

    from add_lightning.experiments.unit import ExitAtBatchEnd

    handled: list[int] = []  # the batches during which the handler ran

    def requeue_and_exit(signum, frame):
        handled.append(model.batch_index)
        sys.exit(3)

    class SignalledModel(BoringModel):
        batch_index = -1

        def training_step(self, batch, batch_idx):
            self.batch_index = batch_idx
            if batch_idx == 2:
                os.kill(os.getpid(), signal.SIGUSR2)
                self.after_signal = True  # the step goes on after the handler ran
            return super().training_step(batch, batch_idx)

    model = SignalledModel()
    previous = signal.signal(signal.SIGUSR2, requeue_and_exit)
    try:
        exit_at_batch_end = ExitAtBatchEnd(signal.SIGUSR2)
        trainer = Trainer(
            default_root_dir=tmp_path,
            max_epochs=1,
            limit_train_batches=6,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[exit_at_batch_end],
        )
        with pytest.raises(SystemExit) as raised:
            trainer.fit(model)
        assert raised.value.code == 3
        assert handled == [2] and model.after_signal
        assert trainer.global_step == 3  # the signalled batch's optimizer step was taken
        # between trainer runs the exit is not held back
        with pytest.raises(SystemExit):
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(1)  # the handler runs at the next bytecode; never reached
        assert handled == [2, 2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    # no Python handler (submitit's debug executor installs none): nothing is changed
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    ExitAtBatchEnd(signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


# ------------------------------------------------------------- launchers with fake unit commands


def _fake_tasks(root: Path, count: int) -> list:
    from add_lightning.experiments.launchers import Task

    return [Task(root, "h", None, seed, f"seed{seed}") for seed in range(count)]


def test_local_backend_gives_each_unit_its_own_gpus(tmp_path, monkeypatch):
    from add_lightning.experiments import launchers

    # Each fake unit records its GPUs, holds them a moment, and marks itself finished.
    script = textwrap.dedent(
        """
        import os, sys, time, pathlib
        run = pathlib.Path(sys.argv[1])
        (run / "gpus").write_text(os.environ["CUDA_VISIBLE_DEVICES"])
        time.sleep(0.5)
        (run / "done").write_text("")
        """
    )
    monkeypatch.setattr(
        launchers.LocalBackend,
        "_command",
        lambda self, task: [sys.executable, "-c", script, str(task.run_dir)],
    )
    backend = launchers.LocalBackend(
        max_parallel=3, gpus_per_unit=2, gpus=["4", "5", "6", "7", "8"]
    )
    assert backend.capacity == 2  # 5 GPUs, 2 per unit
    tasks = _fake_tasks(tmp_path, 4)
    failures = launchers.schedule(tasks, backend, lambda task: (task.run_dir / "done").exists())
    assert failures == []
    gpus = [(task.run_dir / "gpus").read_text() for task in tasks]
    assert all(len(g.split(",")) == 2 for g in gpus)
    assert set(gpus[0].split(",")).isdisjoint(gpus[1].split(","))  # the first two ran together
    assert sorted(backend.free_gpus) == ["4", "5", "6", "7", "8"]  # all given back
    with pytest.raises(ExperimentConfigError, match="--gpus-per-unit"):
        launchers.LocalBackend(gpus_per_unit=3, gpus=["0", "1"])
    with pytest.raises(ExperimentConfigError, match="--max-parallel"):
        launchers.LocalBackend(max_parallel=0)


def test_local_backend_divides_cpu_threads(monkeypatch):
    from add_lightning.experiments import launchers

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(launchers, "_cpu_count", lambda: 16)
    backend = launchers.LocalBackend(max_parallel=3, gpus=[])
    assert (backend.capacity, backend.threads) == (3, 5)
    task = _fake_tasks(Path("x"), 1)[0]
    assert backend._command(task)[-2:] == ["--threads", "5"]
    assert launchers.LocalBackend(max_parallel=1, gpus=[]).threads is None  # serial: torch's
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice wins
    assert launchers.LocalBackend(max_parallel=3, gpus=[]).threads is None


@pytest.mark.parametrize("keep_going", [True, False], ids=["keep-going", "stop"])
def test_schedule_reports_failures_with_their_logs(tmp_path, monkeypatch, keep_going):
    from add_lightning.experiments import launchers

    # seed1 fails; the others succeed (one unit at a time, so the order is known).
    script = textwrap.dedent(
        """
        import sys, pathlib
        run = pathlib.Path(sys.argv[1])
        if run.name == "seed1":
            print("something broke", flush=True)
            sys.exit(3)
        (run / "done").write_text("")
        """
    )
    monkeypatch.setattr(
        launchers.LocalBackend,
        "_command",
        lambda self, task: [sys.executable, "-c", script, str(task.run_dir)],
    )
    tasks = _fake_tasks(tmp_path, 3)
    backend = launchers.LocalBackend(max_parallel=1, gpus=[], echo=False)
    failures = launchers.schedule(
        tasks, backend, lambda task: (task.run_dir / "done").exists(), keep_going=keep_going
    )
    assert [(f.task.label, f.reason) for f in failures] == [("seed1", "failed (exit status 3)")]
    assert failures[0].log_path == tmp_path / "seed1" / "unit.log"
    assert "something broke" in failures[0].log_path.read_text()
    assert (tmp_path / "seed2" / "done").exists() == keep_going  # nothing new after a failure


def test_schedule_waits_for_a_unit_held_by_another_worker(tmp_path, monkeypatch):
    from add_lightning.experiments import launchers

    write_done = "import sys, pathlib; pathlib.Path(sys.argv[1], 'done').write_text('here')"
    monkeypatch.setattr(
        launchers.LocalBackend,
        "_command",
        lambda self, task: [sys.executable, "-c", write_done, str(task.run_dir)],
    )
    held, free = _fake_tasks(tmp_path, 2)
    # Another worker holds `held`'s lock, finishes it and lets go.
    worker = textwrap.dedent(
        f"""
        import pathlib, time
        from add_lightning.experiments.locks import hold_lock
        with hold_lock({str(held.run_dir)!r}):
            pathlib.Path({str(held.run_dir)!r}, "locked").write_text("")
            time.sleep(1.0)
            pathlib.Path({str(held.run_dir)!r}, "done").write_text("elsewhere")
        """
    )
    other = subprocess.Popen([sys.executable, "-c", worker])
    deadline = time.monotonic() + 60  # a guard against hanging, not a timing assertion
    while not (held.run_dir / "locked").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    backend = launchers.LocalBackend(gpus=[], echo=False)
    failures = launchers.schedule([held, free], backend, lambda t: (t.run_dir / "done").exists())
    assert other.wait() == 0
    assert failures == []
    assert (held.run_dir / "done").read_text() == "elsewhere"  # not run a second time here
    assert not (held.run_dir / "unit.log").exists()
    assert (free.run_dir / "done").read_text() == "here"


# ------------------------------------------------------------------------ sweeps, SLURM options


def test_grid_and_variants_expand_to_named_experiments(tmp_path):
    from add_lightning.experiments.sweep import expand_sweep, parse_grid, read_variants

    loss = tmp_path / "ce.yaml"
    loss.write_text("{}\n")
    variants = tmp_path / "variants.yaml"
    variants.write_text(
        f"a: {{config: {loss}, folds: null}}\n"
        "b: {overrides: {trainer.max_epochs: 3, model.init_args.pretrained: null}, seeds: [4]}\n"
    )
    grid = parse_grid(["model.init_args.optimizer.init_args.lr=1e-4,1e-5", f"--config={loss}"])
    members = expand_sweep(read_variants(variants), grid)
    assert [m.name for m in members] == [
        "a_lr=1e-4_ce",
        "a_lr=1e-5_ce",
        "b_lr=1e-4_ce",
        "b_lr=1e-5_ce",
    ]
    first, last = members[0], members[-1]
    assert first.configs == (str(loss), str(loss)) and first.folds is None
    assert first.overrides == ("--model.init_args.optimizer.init_args.lr", "1e-4")
    assert last.overrides == (
        "--trainer.max_epochs",
        "3",
        "--model.init_args.pretrained",
        "null",
        "--model.init_args.optimizer.init_args.lr",
        "1e-5",
    )
    assert last.seeds == [4]
    assert expand_sweep([], []) == []


@pytest.mark.parametrize(
    ("grid", "variants", "message"),
    [
        (["trainer.max_epochs"], None, "KEY=V1,V2"),
        (["a=1,", "b=2"], None, "KEY=V1,V2"),
        (["a=1,2", "a=3"], None, "once"),
        ([], "[1, 2]\n", "map variant names"),
        ([], "a: {config: missing.yaml}\n", "missing.yaml"),
        ([], "a: {lr: 1}\n", "keys among"),
        ([], "a: {folds: [1, x]}\n", "list of integers"),
        (["config=a/x.yaml,b/x.yaml"], None, "own name"),
    ],
    ids=[
        "no-values",
        "empty-value",
        "repeated-key",
        "not-a-mapping",
        "missing-config",
        "unknown-key",
        "bad-folds",
        "duplicate-names",
    ],
)
def test_sweep_rejects_bad_grids_and_variants(tmp_path, grid, variants, message):
    from add_lightning.experiments.sweep import expand_sweep, parse_grid, read_variants

    with pytest.raises(ExperimentConfigError, match=message):
        members = []
        if variants is not None:
            path = tmp_path / "variants.yaml"
            path.write_text(variants)
            members = read_variants(path)
        expand_sweep(members, parse_grid(grid))


def test_paper_sweeps_name_the_experiments_of_the_readme():
    from add_lightning.experiments.sweep import expand_sweep, parse_grid, read_variants

    root = Path(__file__).resolve().parents[1]
    cwd = os.getcwd()
    os.chdir(root)  # the sweep files' paths are relative to the repository root
    try:
        losses = ",".join(f"configs/loss/{loss}.yaml" for loss in ("ce", "focal", "opl", "add"))
        table2 = expand_sweep(read_variants("sweeps/table2.yaml"), parse_grid([f"config={losses}"]))
        ablation = expand_sweep(read_variants("sweeps/ablation.yaml"), [])
    finally:
        os.chdir(cwd)
    assert (
        len(table2) == 24 and table2[0].name == "esc50_ast_ce" and table2[-1].name == "er_beats_add"
    )
    assert {m.folds is None for m in table2 if m.name.startswith("ks2")} == {True}
    assert {tuple(m.folds) for m in table2 if not m.name.startswith("ks2")} == {(1, 2, 3, 4, 5)}
    # the paper's units: 16 cells x 15 + 8 cells x 3
    assert sum(3 * (1 if m.folds is None else len(m.folds)) for m in table2) == 16 * 15 + 8 * 3
    assert [m.name for m in ablation] == [
        f"esc50_ast_add_{code}" for code in ("1000", "0100", "0010", "0001", "1010", "1111")
    ]


def test_slurm_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    from add_lightning.experiments.runner import _backend

    argv = ["cv", "--config", "a.yaml", "--output", str(tmp_path / "out"), "--launcher", "slurm"]
    launch = cli._launch(cli.build_parser().parse_known_args(argv)[0])
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM here
    with pytest.raises(ExperimentConfigError, match="srun"):
        _backend(launch, tmp_path / "out")
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 1\n")  # the script is only written
    (tmp_path / "srun").chmod(0o755)

    config = tmp_path / "slurm.yaml"
    config.write_text(
        "slurm_partition: debug\ntimeout_min: 60\nslurm_additional_parameters: {qos: low}\n"
        "slurm_setup: [module load cuda]\n"
    )
    argv += ["--slurm-config", str(config), "--slurm-partition", "gpu", "--slurm-time", "720"]
    argv += ["--gpus-per-unit", "2", "--cpus-per-unit", "8", "--mem-gb", "64"]
    argv += ["--slurm-sbatch", "account=myproject", "--slurm-setup", "echo ready"]
    argv += ["--max-parallel", "16"]
    args, _ = cli.build_parser().parse_known_args(argv)
    backend = _backend(cli._launch(args), tmp_path / "out")
    script = backend.executor._executor._make_submission_file_text("python -m job", "uid")
    for line in (
        "#SBATCH --partition=gpu",  # the command line wins over the file
        "#SBATCH --time=720",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64GB",
        "#SBATCH --account=myproject",
        "#SBATCH --qos=low",
        "module load cuda",
        "echo ready",
    ):
        assert line in script.splitlines(), line
    assert backend.threads == 8 and backend.executor.parameters["array_parallelism"] == 16
    bad = cli.build_parser().parse_known_args([*argv, "--slurm-sbatch", "account"])[0]
    with pytest.raises(ExperimentConfigError, match="KEY=VALUE"):
        cli._launch(bad)
    with pytest.raises(ExperimentConfigError, match="--no-wait"):
        _backend(
            cli._launch(cli.build_parser().parse_known_args([*argv[:5], "--no-wait"])[0]), tmp_path
        )


def test_console_script_cv_on_slurm_without_slurm_fails_clearly(tiny_config, tmp_path, monkeypatch):
    # A PATH with nothing on it stands for a machine without SLURM, also where SLURM is
    # installed (CI starts a one-node cluster for tests/test_slurm.py).
    empty = tmp_path / "empty_path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    output = tmp_path / "out"
    process = console_output([*_cv_args(tiny_config, output), "--launcher", "slurm"])
    assert process.returncode == 1
    assert (
        "add-lightning cv: error: Expected SLURM's commands (srun, sbatch) on PATH"
        in process.stderr
    )
    assert not (output / EXPERIMENT_FILENAME).exists()  # refused before anything is written
