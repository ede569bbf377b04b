"""Epoch values of train/loss and the loss terms: the batch-size weighted mean of the steps.

References: a hand average (float64) of the step values, the training losses the steps
returned, and, for a 2-process gloo run through the console script, the steps of both ranks.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from console_runs import run_console
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger
from test_cli import TINY_CONFIG
from test_models import ToyData, tiny_model, tiny_trainer
from torch.utils.data import DataLoader, IterableDataset

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TERMS = ["loss", "ce", "add", "add/mu_p", "add/sigma_p", "add/mu_n", "add/sigma_n"]


class StepRecorder(Callback):
    """Per rank: each step's batch size, returned loss and logged step values (a JSON file)."""

    def __init__(self, out_dir: str = "") -> None:
        self.out_dir = Path(out_dir) if out_dir else None
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        logged = {
            key[len("train/") : -len("_step")]: float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith("train/") and key.endswith("_step")
        }
        self.steps.append(
            {
                "epoch": trainer.current_epoch,
                "size": len(batch["clip_id"]),
                "returned": float(outputs["loss"]),
                "logged": logged,
            }
        )

    def on_train_end(self, trainer, module) -> None:
        if self.out_dir is not None:
            path = self.out_dir / f"steps.rank{trainer.global_rank}.json"
            path.write_text(json.dumps(self.steps))


def _epoch_rows(csv_path: Path) -> dict[int, dict[str, float]]:
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    epochs: dict[int, dict[str, float]] = {}
    for row in rows:
        for key, value in row.items():
            if key.endswith("_epoch") and value:
                epochs.setdefault(int(row["epoch"]), {})[key[len("train/") : -6]] = float(value)
    return epochs


def _hand_means(steps: list[dict], epoch: int, name: str, returned: bool = False) -> float:
    chosen = [s for s in steps if s["epoch"] == epoch]
    values = np.array([s["returned"] if returned else s["logged"][name] for s in chosen])
    sizes = np.array([s["size"] for s in chosen], dtype=np.float64)
    return float((values * sizes).sum() / sizes.sum())


def _assert_epoch_losses_are_step_averages(epochs: dict, steps: list[dict]) -> None:
    """Both epochs' `train/loss_epoch` equal the hand average of their steps' returned losses."""
    assert sorted(epochs) == [0, 1]
    for epoch in (0, 1):
        assert set(TERMS) <= set(epochs[epoch])
        assert epochs[epoch]["loss"] == pytest.approx(
            _hand_means(steps, epoch, "", returned=True), rel=1e-6
        )


class _UnsizedClips(IterableDataset):
    """The clips of a ToyClips in order, as a dataset without a length."""

    def __init__(self, clips) -> None:
        self.clips = clips

    def __iter__(self):
        return (self.clips[i] for i in range(len(self.clips)))


class UnsizedToyData(ToyData):
    """ToyData whose training loader has no length: Lightning's epoch length is unknown."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_UnsizedClips(self.train_set), batch_size=self.batch_size)


def _fit_two_epochs(tmp_path: Path, log_every_n_steps: int, data=None, **model_kwargs):
    """A tiny model for 2 epochs of batches 7, 7, 7, 3, with a CSV logger and a StepRecorder."""
    recorder = StepRecorder()
    logger = CSVLogger(str(tmp_path), name="run")
    trainer = tiny_trainer(
        tmp_path,
        max_epochs=2,
        logger=logger,
        callbacks=[recorder],
        log_every_n_steps=log_every_n_steps,
        limit_val_batches=0,
    )
    trainer.fit(tiny_model(**model_kwargs), datamodule=data or ToyData(size=24, batch_size=7))
    return trainer, recorder, Path(logger.log_dir) / "metrics.csv"


def test_epoch_means_equal_the_hand_average_of_the_steps(tmp_path):
    trainer, recorder, metrics_csv = _fit_two_epochs(
        tmp_path, log_every_n_steps=1, log_terms_per_step=True
    )
    assert [s["size"] for s in recorder.steps] == [7, 7, 7, 3] * 2
    assert all(set(s["logged"]) == set(TERMS) for s in recorder.steps)
    epochs = _epoch_rows(metrics_csv)
    _assert_epoch_losses_are_step_averages(epochs, recorder.steps)
    for epoch in (0, 1):
        for name in TERMS:
            assert epochs[epoch][name] == pytest.approx(
                _hand_means(recorder.steps, epoch, name), rel=1e-6, abs=1e-7
            )
    # the step values logged are the steps' own (the returned loss)
    for step in recorder.steps:
        assert step["logged"]["loss"] == pytest.approx(step["returned"], rel=1e-6)
    # the names and the progress-bar/callback value stay those of self.log(on_step, on_epoch)
    assert "train/loss" in trainer.callback_metrics
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(epochs[1]["loss"])


def test_only_the_loss_is_logged_per_step_by_default(tmp_path):
    # Without log_terms_per_step the terms have epoch values only, those of the same run with
    # every term logged per step (whose epoch values equal the hand average of its steps).
    _, every, every_csv = _fit_two_epochs(
        tmp_path / "every", log_every_n_steps=1, log_terms_per_step=True
    )
    trainer, default, default_csv = _fit_two_epochs(tmp_path / "default", log_every_n_steps=1)
    assert all(list(s["logged"]) == ["loss"] for s in default.steps)
    assert [s["returned"] for s in default.steps] == [s["returned"] for s in every.steps]
    with default_csv.open() as handle:
        header = next(csv.reader(handle))
    assert [name for name in header if name.endswith("_step")] == ["train/loss_step"]
    assert {f"train/{name}_epoch" for name in TERMS} <= set(header)
    default_epochs, every_epochs = _epoch_rows(default_csv), _epoch_rows(every_csv)
    for epoch in (0, 1):
        for name in TERMS:
            assert default_epochs[epoch][name] == every_epochs[epoch][name]
    assert "train/add/mu_p_step" not in trainer.callback_metrics
    assert "train/add/mu_p_epoch" in trainer.callback_metrics


@pytest.mark.parametrize("data", [ToyData, UnsizedToyData], ids=["sized", "unknown-length"])
def test_steps_between_logging_steps_count_in_the_epoch_means(tmp_path, data):
    # Step values are logged only at the steps the logger writes (every 3rd here); the epoch
    # values still average every step, and the logged step values are those steps' own, also
    # in an epoch whose length Lightning does not know.
    trainer, recorder, metrics_csv = _fit_two_epochs(
        tmp_path, log_every_n_steps=3, data=data(size=24, batch_size=7)
    )
    assert math.isinf(trainer.num_training_batches) == (data is UnsizedToyData)
    assert [s["size"] for s in recorder.steps] == [7, 7, 7, 3] * 2
    _assert_epoch_losses_are_step_averages(_epoch_rows(metrics_csv), recorder.steps)
    with metrics_csv.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss_step")]
    # Lightning writes step values at steps 3, 6 (1-based), i.e. global steps 2 and 5
    assert [int(row["step"]) for row in rows] == [2, 5]
    for row in rows:
        returned = recorder.steps[int(row["step"])]["returned"]
        assert float(row["train/loss_step"]) == pytest.approx(returned, rel=1e-6)


def test_an_epoch_without_a_logging_step_still_gets_its_epoch_means(tmp_path):
    # 4 steps per epoch and Lightning's default interval of 50: no step value is written; the
    # epoch means still average every step.
    trainer, recorder, metrics_csv = _fit_two_epochs(tmp_path, log_every_n_steps=50)
    epochs = _epoch_rows(metrics_csv)
    _assert_epoch_losses_are_step_averages(epochs, recorder.steps)
    with metrics_csv.open() as handle:
        assert not any(row.get("train/loss_step") for row in csv.DictReader(handle))
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(epochs[1]["loss"])


class LogitRecorder(StepRecorder):
    """A StepRecorder that also keeps the logits of every training step (a hook on the head)."""

    def __init__(self) -> None:
        super().__init__()
        self.logits: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def on_train_start(self, trainer, module) -> None:
        def keep(head, inputs, output):
            if module.training:
                self.logits.append(output.detach().double().numpy())

        module.head.register_forward_hook(keep)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.labels.append(batch["target"].numpy())

    def on_train_epoch_end(self, trainer, module) -> None:
        # what a callback reads at the epoch's end (EpochSummary prints it)
        self.epoch_values = {k: float(v) for k, v in trainer.callback_metrics.items()}


def _hand_accuracy_and_f1(logits: list[np.ndarray], labels: list[np.ndarray]) -> tuple:
    predicted, truth = np.concatenate(logits).argmax(1), np.concatenate(labels)
    f1s = []
    for c in np.union1d(predicted, truth):  # macro F1 over the classes that occur (torchmetrics)
        tp = np.sum((predicted == c) & (truth == c))
        f1s.append(2 * tp / (np.sum(predicted == c) + np.sum(truth == c)))
    return float(np.mean(predicted == truth)), float(np.mean(f1s))


@pytest.mark.parametrize(
    ("max_epochs", "max_steps", "epoch_steps"),
    [(2, -1, [4, 4]), (1, 3, [3])],
    ids=["two-epochs", "stopped-in-the-epoch"],
)
def test_train_accuracy_f1_and_means_count_every_step_of_the_epoch(
    tmp_path, max_epochs, max_steps, epoch_steps
):
    # Every step's values reach the epoch metrics, logging step (every 2nd here) or not, also
    # when `max_steps` ends the epoch early.
    recorder = LogitRecorder()
    logger = CSVLogger(str(tmp_path), name="run")
    trainer = tiny_trainer(
        tmp_path,
        max_epochs=max_epochs,
        max_steps=max_steps,
        logger=logger,
        callbacks=[recorder],
        log_every_n_steps=2,
        limit_val_batches=0,
    )
    trainer.fit(tiny_model(), datamodule=ToyData(size=24, batch_size=7))
    assert [sum(s["epoch"] == e for s in recorder.steps) for e in range(max_epochs)] == epoch_steps
    metrics_csv = Path(logger.log_dir) / "metrics.csv"
    epochs = _epoch_rows(metrics_csv)
    with metrics_csv.open() as handle:  # train/acc and train/f1 are epoch values only
        for row in csv.DictReader(handle):
            for name in ("acc", "f1"):
                if row.get(f"train/{name}"):
                    epochs[int(row["epoch"])][name] = float(row[f"train/{name}"])
    start = 0
    for epoch, count in enumerate(epoch_steps):
        span = slice(start, start + count)
        accuracy, f1 = _hand_accuracy_and_f1(recorder.logits[span], recorder.labels[span])
        start += count
        assert epochs[epoch]["acc"] == pytest.approx(accuracy, abs=1e-6)
        assert epochs[epoch]["f1"] == pytest.approx(f1, abs=1e-6)
        assert epochs[epoch]["loss"] == pytest.approx(
            _hand_means(recorder.steps, epoch, "", returned=True), rel=1e-6
        )
    # callbacks see the whole epoch's values too (the last epoch's here)
    assert recorder.epoch_values["train/acc"] == pytest.approx(epochs[epoch]["acc"], abs=1e-6)
    assert recorder.epoch_values["train/loss_epoch"] == pytest.approx(epochs[epoch]["loss"])


def test_two_process_epoch_means_are_the_mean_over_both_ranks_steps(tmp_path):
    config = {**TINY_CONFIG, "data": {**TINY_CONFIG["data"]}}
    config["data"]["init_args"] = {"size": 24, "batch_size": 5}  # per rank 12: 5, 5, 2
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    out.mkdir()
    command = [
        "fit",
        "--config",
        str(path),
        "--config",
        str(REPO / "configs/loss/add.yaml"),
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(tmp_path / "csv"),
        "--model.init_args.log_terms_per_step",
        "true",  # the terms' step values are the reference of their epoch values
        "--trainer.callbacks+=test_epoch_means.StepRecorder",
        f"--trainer.callbacks.out_dir={out}",
    ]
    run_console(command)
    steps = [json.loads((out / f"steps.rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["size"] for s in steps[0]] == [5, 5, 2] * 2 == [s["size"] for s in steps[1]]
    # the ranks saw different clips, so their step losses differ
    assert steps[0][0]["returned"] != pytest.approx(steps[1][0]["returned"])
    (csv_path,) = (tmp_path / "csv").rglob("metrics.csv")
    epochs = _epoch_rows(csv_path)
    both = steps[0] + steps[1]
    for epoch in (0, 1):
        assert epochs[epoch]["loss"] == pytest.approx(
            _hand_means(both, epoch, "", returned=True), rel=1e-6
        )
        for name in TERMS:
            assert epochs[epoch][name] == pytest.approx(
                _hand_means(both, epoch, name), rel=1e-6, abs=1e-7
            )
