"""Held-out (unseen) classes and the retrieval metrics through the model, `cv`, `compare` and
`figures`: class bookkeeping by hand, logged numbers against pytorch-metric-learning's
AccuracyCalculator on the exported embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from console_runs import console_output
from test_metrics_retrieval import accuracy_calculator
from test_models import ToyData, tiny_model, tiny_trainer
from tiny_runs import synthetic_dataset, tiny_run_config

from add_lightning.data import AudioDataModule, SyntheticDataset
from add_lightning.experiments.figures import load_run_embeddings
from add_lightning.metrics import pairwise_retrieval


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> SyntheticDataset:
    """6 classes x 6 clips of 0.5 s in 2 folds (3 clips per class and fold)."""
    root = tmp_path_factory.mktemp("unseen") / "synthetic"
    dataset = SyntheticDataset(root, num_classes=6, clips_per_class=6, num_folds=2, duration_s=0.5)
    dataset.prepare()
    return dataset


def _data(dataset: SyntheticDataset, **kwargs) -> AudioDataModule:
    kwargs.setdefault("features", {"num_mel_bins": 32, "target_frames": 48})
    return AudioDataModule(dataset, **kwargs)


def _names(data: AudioDataModule, split: str) -> list[tuple[str, str]]:
    """(class name, clip id) of a split's clips, names read through the split's own ids."""
    names = data.split_class_names(split)
    return [(names[clip.label], clip.clip_id) for clip in data._split_clips()[split]]


def test_held_out_classes_leave_training_and_are_the_test_set(synthetic):
    data = _data(synthetic, fold=2, unseen_classes=2, unseen_seed=3)
    unseen = data.unseen_class_names
    assert unseen == sorted(unseen) and len(unseen) == 2
    assert data.class_names == [name for name in synthetic.class_names if name not in unseen]
    assert data.num_classes == 4
    # Every clip's class, by its file, against the split's names and ids.
    all_clips = synthetic.clips("test", 2) + synthetic.clips("train", 2)
    truth = {clip.clip_id: synthetic.class_names[clip.label] for clip in all_clips}
    for split in ("train", "validation", "test"):
        for name, clip_id in _names(data, split):
            assert name == truth[clip_id]
    train = {name for name, _ in _names(data, "train")}
    assert train == set(data.class_names)  # no unseen class trained on
    test = _names(data, "test")
    assert {name for name, _ in test} == set(unseen)
    expected = sorted(c.clip_id for c in synthetic.clips("test", 2) if truth[c.clip_id] in unseen)
    assert sorted(clip_id for _, clip_id in test) == expected  # the test fold's unseen clips
    assert len(expected) == 6
    assert {name for name, _ in _names(data, "validation")} == set(data.class_names)


def test_the_draw_depends_on_unseen_seed_only(synthetic):
    first = _data(synthetic, fold=1, seed=0, unseen_classes=3, unseen_seed=5).unseen_class_names
    assert _data(synthetic, fold=2, seed=7, unseen_classes=3, unseen_seed=5).unseen_class_names == (
        first
    )
    draws = {
        tuple(_data(synthetic, unseen_classes=3, unseen_seed=s).unseen_class_names)
        for s in range(6)
    }
    assert len(draws) > 1
    named = _data(synthetic, unseen_classes=[synthetic.class_names[4], synthetic.class_names[1]])
    assert named.unseen_class_names == [synthetic.class_names[1], synthetic.class_names[4]]
    assert _data(synthetic).unseen_class_names is None
    assert _data(synthetic).class_names == synthetic.class_names


@pytest.mark.parametrize(
    ("unseen", "match"),
    [
        (1, "hold out 0 or between 2 and 4 of the 6 classes"),
        (5, "hold out 0 or between 2 and 4 of the 6 classes"),
        (-2, "hold out 0 or between 2 and 4"),
        (["nope", "00_tone"], "name distinct classes of the dataset.*unknown: nope"),
        (["00_tone", "00_tone"], "repeated names"),
        ("00_tone", "a number of classes or a list of class names"),
    ],
    ids=["one", "too_many", "negative", "unknown", "repeated", "string"],
)
def test_bad_unseen_classes(synthetic, unseen, match):
    with pytest.raises(ValueError, match=match):
        _data(synthetic, unseen_classes=unseen)


def test_model_logs_retrieval_of_validation_and_test(tmp_path):
    data = ToyData(size=24)
    model = tiny_model(knn_k=(1, 3))
    trainer = tiny_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=data)
    logged = trainer.callback_metrics
    assert {f"val/retrieval/{key}" for key in ("map_at_r", "knn1_acc", "knn3_acc")} <= set(logged)
    (metrics,) = trainer.test(model, datamodule=data, verbose=False)
    model.eval()
    with torch.no_grad():
        embeddings = torch.cat([model.embed(batch["features"]) for batch in data.test_dataloader()])
    targets = torch.cat([batch["target"] for batch in data.test_dataloader()])
    for key, value in accuracy_calculator(embeddings, targets).items():
        assert metrics[f"test/retrieval/{key}"] == pytest.approx(value, abs=1e-6), key
    assert "test/acc" in metrics
    quiet = tiny_model(val_retrieval=False)
    tiny_trainer(tmp_path, max_epochs=1).fit(quiet, datamodule=data)
    assert "val/geometry/mu_p" in quiet.trainer.callback_metrics
    assert not [key for key in quiet.trainer.callback_metrics if "/retrieval/" in key]


def test_model_with_unseen_classes_tests_embeddings_only(tmp_path):
    data = ToyData(size=24)  # 3 classes in the batches: stand-ins for 3 held-out classes
    model = tiny_model(unseen_class_names=["x", "y", "z"])
    trainer = tiny_trainer(tmp_path, max_epochs=1)
    (metrics,) = trainer.test(model, datamodule=data, verbose=False)
    assert not [key for key in metrics if key in ("test/acc", "test/f1", "test/loss")]
    assert "test/retrieval/map_at_r" in metrics and "test/geometry/mu_p" in metrics
    assert model.test_geometry.num_classes == model.test_retrieval.num_classes == 3


def test_cv_with_unseen_classes_reports_retrieval_on_them(synthetic, tmp_path):
    config = tmp_path / "tiny.yaml"
    dataset = synthetic_dataset(synthetic.root, num_classes=6, clips_per_class=6)
    config.write_text(tiny_run_config(dataset, batch_size=8, add_loss=True))
    output = tmp_path / "unseen"
    common = ["--config", str(config), "--folds", "2", "--seeds", "0", "--output", str(output)]
    done = console_output(["cv", *common, "--unseen-classes", "2", "--unseen-seed", "3"])
    assert done.returncode == 0, done.stderr[-3000:]
    unseen = _data(synthetic, unseen_classes=2, unseen_seed=3).unseen_class_names
    run_dir = output / "fold2_seed0"
    metrics = json.loads((run_dir / "test_metrics.json").read_text())["metrics"]
    assert not [key for key in metrics if key.endswith("/acc") or key.endswith("/loss")]
    run = load_run_embeddings(run_dir)
    assert run.class_names == unseen and sorted(set(run.targets.tolist())) == [0, 1]
    assert len(run.targets) == 6  # 2 unseen classes x 3 clips of test fold 2
    embeddings, targets = torch.from_numpy(run.embeddings), torch.from_numpy(run.targets)
    for key, value in accuracy_calculator(embeddings, targets).items():
        assert metrics[f"test/retrieval/{key}"] == pytest.approx(value, abs=1e-6), key
    knn = pairwise_retrieval(embeddings.double(), targets, 2)["knn5_acc"]
    assert metrics["test/retrieval/knn5_acc"] == pytest.approx(float(knn), abs=1e-6)
    # The head trained on the 4 seen classes only.
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["state_dict"]["head.weight"].shape[0] == 4
    assert checkpoint["hyper_parameters"]["unseen_class_names"] == unseen

    metric = ["--metric", "test/retrieval/map_at_r", "test/geometry/mu_p"]
    table = console_output(["compare", str(output), *metric])
    assert table.returncode == 0, table.stderr
    header, _, row = table.stdout.splitlines()[2:5]
    assert header == "| loss | test/retrieval/map_at_r | test/geometry/mu_p |"
    assert row == (
        f"| CE + ADD (1,1,1,1) | **{metrics['test/retrieval/map_at_r']:.4f}** | "
        f"**{metrics['test/geometry/mu_p']:.4f}** |"
    )
    figures = console_output(["figures", str(run_dir), "--output", str(tmp_path / "f.png")])
    assert figures.returncode == 0, figures.stderr
    assert f"{metrics['test/retrieval/map_at_r']:.4f}" in figures.stdout
    assert np.isclose(
        float(figures.stdout.splitlines()[-1].split("|")[8]),
        metrics["test/retrieval/map_at_r"],
        atol=1e-4,
    )
