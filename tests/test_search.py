"""`add-lightning search`: an Optuna study whose trials are cross-validated tiny-model runs.

One search (4 trials over two ADD weights, 2 folds x 1 seed, 1 epoch, 2 local workers) is
started in a subprocess, killed with SIGKILL in the middle of a trial, and resumed in this
process; the tests read it. Its first trial is enqueued with an ADD weight of 1e39, which makes
the loss infinite: that trial must be pruned while the search goes on. The data module of the
search records every test loader it builds (:class:`RecordingDataModule`), so the tests count
which run folders read the test folds. The reference of "the trial's metric" is the stored
validation metric of the trial's units, compared with a fresh `validate` of the checkpoints
that `cv` trained from the written best config.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
import yaml
from console_runs import console_env
from tiny_runs import synthetic_dataset, tiny_run_config

from add_lightning.cli import console_main
from add_lightning.data import AudioDataModule
from add_lightning.experiments.config import compose_config
from add_lightning.experiments.search_space import read_search_space

REPO = Path(__file__).resolve().parents[1]
_TIMEOUT_S = 900  # a guard against hanging, not a timing assertion
_LOADERS = "ADD_LIGHTNING_TEST_LOADERS"
SPACE = """\
parameters:
  lambda_mu_n: {low: 0.1, high: 2.0}
  lambda_sigma_n: {low: 0.0, high: 2.0}
"""
# The first trial: a weight whose loss term overflows float32 at the first batch.
DIVERGING = "enqueue:\n  - {lambda_mu_n: 1.0e+39}\n"


class RecordingDataModule(AudioDataModule):
    """An AudioDataModule that appends one JSON line per test loader it builds (test and the
    test-embedding export) to the file named by $ADD_LIGHTNING_TEST_LOADERS: the run folder and
    the fold."""

    def test_dataloader(self):
        record = os.environ.get(_LOADERS)
        if record:
            run = self.trainer.default_root_dir if self.trainer is not None else None
            with open(record, "a", encoding="utf-8") as stream:
                stream.write(json.dumps({"run": str(run), "fold": self.fold}) + "\n")
        return super().test_dataloader()


def _config_text(root: Path) -> str:
    config = yaml.safe_load(
        tiny_run_config(
            synthetic_dataset(root / "synthetic"), max_epochs=1, add_loss=True, deterministic=True
        )
    )
    config["data"]["class_path"] = f"{__name__}.RecordingDataModule"
    return yaml.safe_dump(config, sort_keys=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    """The tiny config (3 classes x 4 clips, 2 folds), the search space with and without the
    diverging trial."""
    root = tmp_path_factory.mktemp("search_files")
    (root / "tiny.yaml").write_text(_config_text(root))
    (root / "space.yaml").write_text(SPACE)
    (root / "diverging.yaml").write_text(SPACE + DIVERGING)
    return SimpleNamespace(
        root=root,
        config=root / "tiny.yaml",
        space=root / "space.yaml",
        diverging=root / "diverging.yaml",
    )


def _search_args(files: SimpleNamespace, output: Path, *extra: str) -> list[str]:
    return [
        *("search", "--config", str(files.config), "--space", str(files.diverging)),
        *("--trials", "4", "--folds", "1", "2", "--seeds", "0", "--output", str(output)),
        *("--workers", "2", "--val-fraction", "0.5", *extra),
    ]


def _study(output: Path):
    return optuna.load_study(study_name="search", storage=f"sqlite:///{output / 'study.db'}")


def _kill_during_a_trial(argv: list[str], output: Path, log_path: Path) -> None:
    """Runs `add-lightning ARGV` in its own process group and kills the group (the command and
    its workers) with SIGKILL once a trial has finished and another is in its first unit."""
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "add_lightning.cli", *argv],
            env=console_env(),
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    deadline = time.monotonic() + _TIMEOUT_S
    try:
        while time.monotonic() < deadline and process.poll() is None:
            folders = sorted((output / "trials").glob("trial*"))
            finished = [f for f in folders if (f / "trial.json").exists()]
            in_first_unit = [
                f
                for f in folders
                if f not in finished
                and (f / "fold1_seed0").is_dir()
                and not (f / "fold2_seed0").exists()
            ]
            if finished and in_first_unit:
                break
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert finished and in_first_unit, (
        "the search ended before it could be killed in a trial:\n" + log_path.read_text()[-3000:]
    )


def _console(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = console_main(argv)
    return status, out.getvalue(), err.getvalue()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def search(files, tmp_path_factory) -> SimpleNamespace:
    """The search, killed (SIGKILL of the command and its 2 workers) and rerun to its end,
    then rerun once more (finished: nothing to train). Read-only."""
    output = tmp_path_factory.mktemp("search") / "out"
    argv = _search_args(files, output)
    loaders = files.root / "test_loaders.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        # The workers and units import RecordingDataModule from this folder; one thread each,
        # as a `cv` of the best config in a test below.
        patch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "tests"), str(REPO)]))
        patch.setenv(_LOADERS, str(loaders))
        patch.setenv("OMP_NUM_THREADS", "1")
        _kill_during_a_trial(argv, output, files.root / "killed.log")
        at_kill = _study(output).get_trials()
        handler, root_logger = _Records(), logging.getLogger()
        level = root_logger.level
        root_logger.addHandler(handler)
        root_logger.setLevel(logging.INFO)
        try:
            status, stdout, stderr = _console(argv)
            assert status == 0, stderr
            rerun = _console(argv)
        finally:
            root_logger.removeHandler(handler)
            root_logger.setLevel(level)
    return SimpleNamespace(
        output=output,
        at_kill=at_kill,
        trials=_study(output).get_trials(),
        stdout=stdout,
        messages=handler.messages,
        loaders=loaders,
        rerun=rerun,
    )


def _record(output: Path, number: int) -> dict:
    return json.loads((output / "trials" / f"trial{number}" / "trial.json").read_text())


def _states(trials) -> dict[str, list[int]]:
    states: dict[str, list[int]] = {}
    for trial in trials:
        states.setdefault(trial.state.name, []).append(trial.number)
    return states


# ------------------------------------------------------------------------------ the search


def test_search_of_4_trials_with_2_workers_resumes_after_kill_9(search):
    finished_at_kill = [t for t in search.at_kill if t.state.is_finished()]
    running_at_kill = [t for t in search.at_kill if t.state.name == "RUNNING"]
    assert finished_at_kill and any(t.params for t in running_at_kill)  # one in its first unit
    after = {trial.number: trial for trial in search.trials}
    # Finished trials are kept as they were, not run again.
    for trial in finished_at_kill:
        kept = after[trial.number]
        assert (kept.state, kept.value, kept.params) == (trial.state, trial.value, trial.params)
        assert kept.datetime_complete == trial.datetime_complete
    # Each interrupted trial failed, and exactly one later trial reran its values to the end.
    for trial in running_at_kill:
        assert after[trial.number].state.name == "FAIL"
        (rerun,) = [t for t in search.trials if t.user_attrs.get("retry_of") == trial.number]
        # its values (none when it was killed while being asked for: then all are new)
        assert trial.params.items() <= rerun.params.items() and rerun.state.is_finished()
        assert rerun.state.name != "FAIL"
        if (search.output / "trials" / f"trial{trial.number}").is_dir():  # asked for in full
            assert _record(search.output, trial.number)["note"] == (
                f"interrupted; rerun as trial {rerun.number}"
            )
    states = _states(search.trials)
    assert len(states.get("COMPLETE", [])) + len(states.get("PRUNED", [])) == 4
    assert set(states) <= {"COMPLETE", "PRUNED", "FAIL"}
    # Two workers shared the study to its end; between them they ran every trial.
    logs = [(search.output / "workers" / f"worker{k}" / "unit.log").read_text() for k in (0, 1)]
    for k, text in enumerate(logs):
        assert f"The search needs no more trials: worker {k} ends" in text
    logged = {int(n) for n in re.findall(r"INFO \S+: Trial (\d+): ", "".join(logs))}
    started = {int(p.parent.name[5:]) for p in search.output.glob("trials/*/experiment.yaml")}
    assert started <= logged <= set(after)
    # The table of trials, on stdout and in trials.csv: every trial, one row each.
    with (search.output / "trials.csv").open() as stream:
        rows = {int(row["trial"]): row for row in csv.DictReader(stream)}
    assert set(rows) == set(after)
    assert {rows[n]["state"] for n in states.get("COMPLETE", [])} == {"COMPLETE"}
    assert "| trial | state | val/acc | values | note |" in search.stdout


def test_a_rerun_of_a_finished_search_trains_nothing(search):
    status, stdout, stderr = search.rerun
    assert status == 0, stderr
    assert [t.number for t in _study(search.output).get_trials()] == [
        t.number for t in search.trials
    ]
    assert stdout == search.stdout  # the same trials, best trial and test table


def test_a_diverging_trial_is_pruned_and_the_search_goes_on(search):
    (first,) = [t for t in search.trials if t.number == 0]
    assert first.params["lambda_mu_n"] == 1e39  # the enqueued trial
    assert first.state.name == "PRUNED"
    note = _record(search.output, 0)["note"]
    assert note.startswith("diverged: The ") and " loss is inf " in note
    assert [t for t in search.trials if t.state.name == "COMPLETE"]


def test_search_reads_no_test_fold_before_evaluating_the_best_trial(search):
    output = search.output
    # The trials validate on an inner split of the training folds, and say so.
    notice = next(m for m in search.messages if "inner split" in m)
    assert "is the test fold" in notice and "val_fraction 0.5" in notice
    configs = list((output / "trials").glob("trial*/experiment.yaml"))
    assert len(configs) >= 4
    for path in configs:
        assert yaml.safe_load(path.read_text())["data"]["init_args"]["val_fraction"] == 0.5
    # No trial has a test metric; every unit's metrics are validation metrics.
    for trial in search.trials:
        for unit in trial.user_attrs.get("units", []):
            assert unit["metrics"] and all(name.startswith("val/") for name in unit["metrics"])
    assert not list((output / "trials").rglob("test_metrics.json"))
    # The test folds were read once per unit of the final `cv` (its test and its export of the
    # test embeddings), and by nothing else: not by the killed run, not by a trial.
    reads = [json.loads(line) for line in search.loaders.read_text().splitlines()]
    assert sorted((Path(read["run"]).name, read["fold"]) for read in reads) == [
        ("fold1_seed0", 1),
        ("fold1_seed0", 1),
        ("fold2_seed0", 2),
        ("fold2_seed0", 2),
    ]
    assert {Path(read["run"]).parent for read in reads} == {output / "best"}
    rows = list(csv.DictReader((output / "best" / "results.csv").open()))
    assert [(row["fold"], row["seed"]) for row in rows[:2]] == [("1", "0"), ("2", "0")]
    assert "test/acc" in rows[0]


def test_best_config_reproduces_its_trials_metric_when_run_by_cv(search, tmp_path):
    output = search.output
    records = [json.loads(p.read_text()) for p in (output / "trials").glob("*/trial.json")]
    complete = [r for r in records if r["state"] == "COMPLETE"]
    means = {r["number"]: np.mean([u["metrics"]["val/acc"] for u in r["units"]]) for r in complete}
    best_config = output / "best.yaml"
    best = int(best_config.read_text().split("The best trial (", 1)[1].split(")", 1)[0])
    assert means[best] == max(means.values())
    trial_folder = output / "trials" / f"trial{best}"
    assert yaml.safe_load(best_config.read_text()) == yaml.safe_load(
        (trial_folder / "experiment.yaml").read_text()
    )
    # `fit` takes it as it is
    with pytest.raises(SystemExit) as exit_, contextlib.redirect_stdout(io.StringIO()) as out:
        console_main(["fit", "--config", str(best_config), "--print_config"])
    assert exit_.value.code in (None, 0)
    assert yaml.safe_load(out.getvalue())["data"]["init_args"]["val_fraction"] == 0.5
    # `cv` ran best.yaml in OUTPUT/best (the final evaluation): validating its checkpoints
    # gives the trial's own validation numbers, unit by unit.
    from add_lightning.lightning_cli import AddLightningCLI

    (record,) = [r for r in records if r["number"] == best]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the units were trained
    try:
        for unit in record["units"]:
            name = f"fold{unit['fold']}_seed{unit['seed']}"
            cli = AddLightningCLI(
                args=[
                    *("validate", "--config", str(best_config)),
                    *("--ckpt_path", str(output / "best" / name / "checkpoints" / "last.ckpt")),
                    *("--data.init_args.fold", str(unit["fold"])),
                    *("--data.init_args.seed", str(unit["seed"])),
                    *("--seed_everything", str(unit["seed"])),
                    *("--trainer.default_root_dir", str(tmp_path / name)),
                ]
            )
            metrics = cli.trainer.callback_metrics
            assert float(metrics["val/acc"]) == unit["metrics"]["val/acc"]
            assert float(metrics["val/loss"]) == pytest.approx(unit["metrics"]["val/loss"], 1e-6)
    finally:
        torch.set_num_threads(threads)


def test_compare_reads_the_trials_of_a_search_folder(search):
    complete = sorted(t.number for t in search.trials if t.state.name == "COMPLETE")
    status, stdout, stderr = _console(["compare", str(search.output), "--metric", "val/acc"])
    assert status == 0, stderr
    for number in complete:
        record = _record(search.output, number)
        mean = np.mean([unit["metrics"]["val/acc"] for unit in record["units"]])
        (line,) = [line for line in stdout.splitlines() if f"| trial {number} (" in line]
        assert f"{100 * mean:.2f}" in line
        assert f"lambda_mu_n={record['params']['lambda_mu_n']:.3g}" in line
    assert "| trial 0 (" not in stdout  # pruned: not a row
    # The test metrics are not there: the error says where they are.
    status, _, stderr = _console(["compare", str(search.output)])
    assert status == 1
    assert "validation metrics only" in stderr and str(search.output / "best") in stderr


def test_another_search_in_the_folder_is_refused(search, files, tmp_path, capsys):
    output = tmp_path / "copy"
    output.mkdir()
    for name in ("search.yaml", "base.yaml"):
        (output / name).write_bytes((search.output / name).read_bytes())
    status, _, stderr = _console([*_search_args(files, output), "--seed", "1"])
    assert status == 1
    assert "seed" in stderr and "another --output" in stderr
    assert stderr.count("\n") == 1


# ----------------------------------------------------------------------- pruning, sampling


def test_median_pruner_stops_a_trial_below_an_earlier_one_in_its_first_unit(files, tmp_path):
    from add_lightning.experiments.search import SearchOptions, plan_search
    from add_lightning.experiments.search_study import open_study, write_search
    from add_lightning.experiments.search_worker import run_worker

    output = tmp_path / "pruned"
    options = SearchOptions(
        trials=2,
        val_fraction=0.5,
        pruner_startup_trials=1,
        storage=f"sqlite:///{tmp_path / 'elsewhere.db'}",  # any storage URL
    )
    search = plan_search([files.config], files.space, output, options, [1, 2], [0])
    write_search(search)
    study = open_study(search, create=True)
    # An earlier trial, perfect at the first epoch of the first unit: the median to beat.
    study.add_trial(
        optuna.trial.create_trial(
            params={"lambda_mu_n": 1.0, "lambda_sigma_n": 1.0},
            distributions=search.space.distributions(),
            value=1.0,
            intermediate_values={0: 1.0},
        )
    )
    worker = output / "workers" / "worker0"
    assert run_worker(output / "search.yaml", worker, 0, search.digest()) == 0
    trial = study.get_trials()[1]
    assert trial.state.name == "PRUNED"
    assert list(trial.intermediate_values) == [0] and trial.intermediate_values[0] < 1.0
    record = _record(output, 1)
    assert record["note"].startswith("pruned at fold1_seed0 epoch 0 (val/acc ")
    assert not (output / "trials" / "trial1" / "fold2_seed0").exists()  # stopped in unit 1
    assert not list((output / "trials" / "trial1").rglob("*.ckpt"))  # checkpoints deleted
    assert not (output / "study.db").exists()


def test_a_trial_that_fails_stops_its_worker_and_a_rerun_asks_a_new_one(files, tmp_path):
    from add_lightning.experiments.search import SearchOptions, plan_search
    from add_lightning.experiments.search_study import left_to_ask, open_study, write_search
    from add_lightning.experiments.search_worker import main as worker_main

    space = tmp_path / "space.yaml"
    space.write_text("parameters:\n  batch_size: {choices: [0]}\n")  # refused by the data
    output = tmp_path / "failing"
    options = SearchOptions(trials=1, val_fraction=0.5)
    search = plan_search([files.config], space, output, options, [1, 2], [0])
    write_search(search)
    study = open_study(search, create=True)
    argv = ["--experiment", str(output / "search.yaml"), "--run-dir", str(output / "worker0")]
    assert worker_main([*argv, "--seed", "0", "--config-hash", search.digest()]) == 1
    (trial,) = study.get_trials()
    assert trial.state.name == "FAIL"
    assert _record(output, 0)["note"].startswith("ValueError: Expected argument `batch_size`")
    assert left_to_ask(study, search.trials) == 1  # a failed trial does not count


def test_sampler_draws_depend_on_the_seed_the_worker_and_the_trials_asked():
    from add_lightning.experiments.search_worker import _sampler

    distributions = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}

    def first_draw(*key: int) -> float:
        study = optuna.create_study(sampler=_sampler(*key))
        return study.ask(distributions).params["x"]

    assert first_draw(0, 0, 0) == first_draw(0, 0, 0)
    assert len({first_draw(0, 0, 0), first_draw(1, 0, 0), first_draw(0, 1, 0)}) == 3
    assert first_draw(0, 0, 0) != first_draw(0, 0, 3)  # a restarted worker draws anew


# ------------------------------------------------------------------------------------ SLURM


def test_workers_run_as_a_slurm_job_array_sharing_the_study(files, tmp_path, monkeypatch):
    from test_slurm import _scheduler_missing

    reason = _scheduler_missing()
    if reason is not None:
        pytest.skip(reason)
    # The jobs inherit the environment: RecordingDataModule is imported from this folder.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "tests"), str(REPO)]))
    output = tmp_path / "slurm"
    argv = [*_search_args(files, output, "--launcher", "slurm", "--cpus-per-unit", "1")]
    argv[argv.index("4")] = "3"  # --trials 3: the diverging one and two others
    try:
        status, stdout, stderr = _console(argv)
    finally:
        jobs = {path.name.split("_")[0] for path in output.rglob(".submitit/*_submitted.pkl")}
        subprocess.run(["scancel", *jobs], check=False, capture_output=True)
    assert status == 0, stderr
    # One job array of two workers, then one of the best trial's two units.
    workers = sorted(path.name for path in (output / ".submitit").glob("*_log.err"))
    assert len(workers) == 2 and len({name.split("_")[0] for name in workers}) == 1
    states = _states(_study(output).get_trials())
    assert states["PRUNED"] == [0] and len(states["COMPLETE"]) == 2
    assert (output / "best" / "results.csv").is_file()
    assert "Best: trial " in stdout


# ---------------------------------------------------------------------------- user errors


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ("parameters:\n  lamda_mu_n: {low: 0, high: 2}\n", "`lamda_mu_n`"),
        ("parameters:\n  lambda_mu_n: {low: 2, high: 1}\n", "low <= high"),
        ("parameters:\n  lambda_mu_n: {low: 0, high: 2, log: true}\n", "low > 0"),
        ("parameters:\n  lambda_mu_n: {low: 0, hi: 2}\n", "got hi"),
        ("parameters:\n  batch_size: {choices: []}\n", "non-empty list"),
        ("parameters:\n  batch_size: {low: 2, high: 4.5}\n", "integers"),
        ("parameters:\n  init_args.seed: {low: 0, high: 2}\n", "names 2"),
        ("parameters:\n  lambda_mu_n: [1, 2]\nenqueue:\n  - {lr: 1}\n", "`lr`"),
        ("parameters: {lambda_mu_n: [1, 2\n", "is not valid YAML"),
    ],
    ids=[
        "unknown",
        "low>high",
        "log-from-0",
        "unknown-field",
        "no-choices",
        "int",
        "ambiguous",
        "enqueue-unknown",
        "not-yaml",
    ],
)
def test_bad_search_space_is_one_line_naming_the_key(files, tmp_path, space, expected):
    path = tmp_path / "space.yaml"
    path.write_text(space)
    argv = [*_search_args(files, tmp_path / "out")]
    argv[argv.index(str(files.diverging))] = str(path)
    status, _, stderr = _console(argv)
    assert status == 1
    assert stderr.startswith("add-lightning search: error: ") and stderr.count("\n") == 1
    assert expected in stderr and str(path) in stderr
    assert not (tmp_path / "out").exists()


def test_a_space_that_is_no_file_is_one_line_naming_the_packaged_ones(files, tmp_path):
    argv = _search_args(files, tmp_path / "out")
    argv[argv.index(str(files.diverging))] = "add_weigths"
    status, _, stderr = _console(argv)
    assert status == 1 and stderr.count("\n") == 1
    assert "'add_weigths' is neither" in stderr and "search/add_weights" in stderr


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--metric", "test/acc"], "a validation metric (val/...)"),
        (["--trainer.devices", "2"], "trainer.devices 1"),
        (["--trials", "0"], "`--trials` >= 1"),
        (["--val-fraction", "1.5"], "`--val-fraction` to be in (0, 1)"),
    ],
    ids=["test-metric", "two-devices", "no-trials", "val-fraction"],
)
def test_search_refuses_what_it_cannot_run_in_one_line(files, tmp_path, extra, expected):
    status, _, stderr = _console([*_search_args(files, tmp_path / "out"), *extra])
    assert status == 1 and stderr.count("\n") == 1
    assert expected in stderr
    assert not (tmp_path / "out").exists()


def test_inner_validation_needs_a_val_fraction_where_validation_is_the_test_fold():
    from add_lightning.experiments.runner import Unit
    from add_lightning.experiments.search import inner_validation

    config = {"data": {"class_path": "my.FoldData", "init_args": {"fold": 1}}}
    with pytest.raises(ValueError, match=r"my\.FoldData validates on the held-out fold"):
        inner_validation(config, [Unit(1, 0)], 0.2)
    official = {"data": {"class_path": "my.SplitData", "init_args": {"fold": None}}}
    unchanged, how = inner_validation(official, [Unit(None, 0)], 0.2)
    assert unchanged == official and "validation split" in how


def test_search_without_optuna_says_which_extra_to_install(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    status, _, stderr = _console(_search_args(files, tmp_path / "out"))
    assert status == 1
    assert stderr.count("\n") == 1 and "pip install 'add-lightning[search]'" in stderr


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "search").glob("*.yaml")), ids=str)
def test_packaged_search_spaces_read_against_the_quickstart(path):
    space = read_search_space(path, compose_config([REPO / "configs" / "quickstart.yaml"]))
    assert space.parameters
    for values in space.enqueue:  # inside the ranges
        for name, value in values.items():
            parameter = space.parameters[name]
            assert parameter.low <= value <= parameter.high or value in parameter.choices
