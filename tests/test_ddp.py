"""Multi-process runs through the console script: 2 gloo CPU processes stand in for 2 GPUs.

References: the single-process run of the same data (same global batches, same evaluation
batches), float64 normalisation statistics computed here from the raw features, and the
invariants of DDP (identical weights on every rank). The runs are shared between assertions:
they are the slowest part of the suite.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from console_runs import heavy_modules_loaded_by, run_console
from lightning.pytorch import Callback
from test_backbone_beats import TINY as TINY_BEATS
from tiny_runs import synthetic_dataset, tiny_run_config

from add_lightning.cli import main
from add_lightning.data.sampler import EvaluationSampler, SeededShuffleSampler

REPO = Path(__file__).resolve().parents[1]
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


class RankRecorder(Callback):
    """Writes, per rank, what a test compares: weights, layer-drop decisions, test metrics and
    the normalisation statistics (with the number of times this process computed them)."""

    def __init__(self, out_dir: str) -> None:
        import add_lightning.data.datamodule as datamodule

        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.steps: list[dict] = []
        self.computed = 0
        original = datamodule.compute_normalization

        def counted(dataset):
            self.computed += 1
            return original(dataset)

        datamodule.compute_normalization = counted  # this process only (a subprocess)
        self.forks = 0

        def count_forks(event: str, args: tuple) -> None:
            if event == "os.fork":
                self.forks += 1

        sys.addaudithook(count_forks)  # for good: this process is a run's own
        self._layers: list[list[torch.Tensor]] = []

    @staticmethod
    def _encoder(module):
        encoder = getattr(module.backbone, "encoder", None)
        return encoder if hasattr(encoder, "dropped_layers") else None

    @staticmethod
    def _own_parameters(layer) -> list[torch.Tensor]:
        # the relative position table is shared by all layers and used in every pass
        return [p for n, p in layer.named_parameters() if "relative_attention_bias" not in n]

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        encoder = self._encoder(module)
        if encoder is not None:
            self._layers = [
                [p.detach().clone() for p in self._own_parameters(layer)]
                for layer in encoder.layers
            ]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        encoder = self._encoder(module)
        if encoder is None:
            return
        changed = [
            any(
                not torch.equal(a, b)
                for a, b in zip(before, self._own_parameters(layer), strict=True)
            )
            for before, layer in zip(self._layers, encoder.layers, strict=True)
        ]
        self.steps.append({"dropped": list(encoder.dropped_layers), "changed": changed})

    def _write(self, trainer, name: str, content: dict) -> None:
        path = self.out_dir / f"{name}.rank{trainer.global_rank}.json"
        path.write_text(json.dumps(content))

    def on_train_start(self, trainer, module) -> None:
        self.first_step = trainer.global_step

    def on_train_epoch_start(self, trainer, module) -> None:
        # the run's last.ckpt of epoch 0, where a run stopped after one epoch resumes
        last = Path(trainer.default_root_dir, "checkpoints", "last.ckpt")
        if trainer.current_epoch == 1 and trainer.is_global_zero and last.exists():
            shutil.copy(last, self.out_dir)

    def on_train_end(self, trainer, module) -> None:
        weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
        torch.save(weights, self.out_dir / f"weights.rank{trainer.global_rank}.pt")
        normalization = getattr(trainer.datamodule, "_fold_normalization", None)
        self._write(
            trainer,
            "fit",
            {
                "steps": self.steps,
                "first_step": self.first_step,
                "computed": self.computed,
                "forks": self.forks,
                "normalization": None
                if normalization is None
                else [normalization.mean, normalization.std],
            },
        )

    def on_test_end(self, trainer, module) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self._write(trainer, "test", metrics)


def _run(args: list[str]) -> None:
    # One 2-process run takes 15-30 s here (minutes under load); a run past run_console's
    # limit fails with every process's stacks.
    run_console(args)


def _recorder(out_dir: Path) -> list[str]:
    return ["--trainer.callbacks+=test_ddp.RankRecorder", f"--trainer.callbacks.out_dir={out_dir}"]


def _read(out_dir: Path, name: str) -> list[dict]:
    return [json.loads((out_dir / f"{name}.rank{r}.json").read_text()) for r in (0, 1)]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def _assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


# ------------------------------------------------------------ samplers (no processes needed)


def test_shuffle_sampler_shards_are_the_single_process_batches() -> None:
    # The batches of step s of both ranks together are step s of one process with twice the
    # batch size; 11 clips are padded (as torch's DistributedSampler pads) to 12.
    whole = list(SeededShuffleSampler(11, seed=3))
    shards = [list(SeededShuffleSampler(11, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert [len(s) for s in shards] == [6, 6]
    padded = whole + whole[:1]
    for step in range(3):
        together = shards[0][2 * step : 2 * step + 2] + shards[1][2 * step : 2 * step + 2]
        assert sorted(together) == sorted(padded[4 * step : 4 * step + 4])


def test_evaluation_sampler_deals_whole_batches_without_repeats() -> None:
    # 11 clips in batches of 3: [0 1 2] [3 4 5] [6 7 8] [9 10]; rank 0 gets batches 0 and 2.
    shards = [list(EvaluationSampler(11, 3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert shards == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 10]]
    # fewer batches than ranks: consecutive parts of nearly equal size
    assert [list(EvaluationSampler(5, 8, num_replicas=2, rank=r)) for r in (0, 1)] == [
        [0, 1],
        [2, 3, 4],
    ]
    with pytest.raises(ValueError, match="3 evaluation clips between 4 processes"):
        EvaluationSampler(3, 8, num_replicas=4, rank=0)


def test_the_fork_server_of_dataloader_workers_imports_no_lightning() -> None:
    # Under DDP every rank starts a fork server for its DataLoader workers (data/workers.py);
    # what it preloads should cost torch's import, not Lightning's as well (3 s more per rank)
    code = (
        "import importlib; from add_lightning.data.workers import WORKER_MODULES; "
        "[importlib.import_module(name) for name in WORKER_MODULES]"
    )
    assert heavy_modules_loaded_by(code) == []


# ----------------------------------------------------- BEATs with layer drop under DDP (item 1)

BEATS = {
    "class_path": "add_lightning.models.BEATsBackbone",
    "init_args": {
        **TINY_BEATS,  # test_backbone_beats.TINY, with 4 layers to drop from
        "encoder_layers": 4,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "encoder_layerdrop": 0.5,
        "layer_wise_gradient_decay_ratio": 0.6,
    },
}


def test_beats_with_layer_drop_trains_under_ddp(tmp_path) -> None:
    config = {
        "data": {"class_path": "test_models.ToyData", "init_args": {"size": 24, "batch_size": 4}},
        "model": {
            "class_path": "add_lightning.models.AudioClassifier",
            "init_args": {
                "backbone": BEATS,
                "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-2}},
            },
        },
        "trainer": {
            "max_epochs": 2,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            "logger": False,
            "default_root_dir": str(tmp_path / "run"),  # config.yaml goes there, not to cwd
        },
    }
    path = tmp_path / "beats.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "record"
    _run(["fit", "--config", str(path), "--config", str(REPO / "configs/loss/add.yaml"), *DDP,
          *_recorder(out)])  # fmt: skip

    weights = [torch.load(out / f"weights.rank{r}.pt") for r in (0, 1)]
    _assert_same_weights(weights[0], weights[1], atol=0.0)
    records = _read(out, "fit")
    steps = [record["steps"] for record in records]
    assert len(steps[0]) == 6  # 24 clips / 2 ranks / batch 4 = 3 steps, 2 epochs
    assert [s["dropped"] for s in steps[0]] == [s["dropped"] for s in steps[1]]
    dropped = [layer for step in steps[0] for layer in step["dropped"]]
    assert 0 < len(dropped) < 6 * 4  # layer drop at p = 0.5 did skip some layers, not all
    for step in steps[0]:
        # as on one device: a skipped layer is left untouched by Adam, a layer that ran moves
        assert step["changed"] == [i not in step["dropped"] for i in range(4)]


# --------------------------------------- synthetic audio: items 2 (evaluation), 3, 4 and 5


def _audio_config(root: Path, batch_size: int) -> str:
    """3 classes x 9 synthetic clips (3 folds), mixup and time masking, a one-layer AST, SGD."""
    return tiny_run_config(
        synthetic_dataset(root, clips_per_class=9, num_folds=3),
        max_epochs=2,
        batch_size=batch_size,
        optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5, "momentum": 0.9}},
        data_args={
            "mixup": {"class_path": "add_lightning.data.Mixup", "init_args": {"rate": 0.5}},
            "spec_augment": {
                "class_path": "add_lightning.data.SpecAugment",
                "init_args": {"time_mask": 8},
            },
        },
    )


@pytest.fixture(scope="module")
def audio_runs(tmp_path_factory) -> dict[str, Path]:
    """2-process fits (uninterrupted, interrupted + resumed) and the single-process reference.

    18 training clips: 3 steps of 2 x 3 clips (one process: 3 steps of 6); 9 test clips (odd),
    3 evaluation batches of 3, dealt 2 + 1 to the ranks.
    """
    root = tmp_path_factory.mktemp("ddp")
    data = root / "synthetic"
    configs = {}
    for batch_size in (3, 6):
        configs[batch_size] = root / f"audio{batch_size}.yaml"
        configs[batch_size].write_text(_audio_config(data, batch_size))

    def fit(config: Path, run: str, *extra: str) -> list[str]:
        return ["fit", "--config", str(config), "--config", str(REPO / "configs/loss/add.yaml"),
                "--trainer.default_root_dir", str(root / run), *extra]  # fmt: skip

    # one process, global batch 6 (also generates the data set before the parallel runs)
    assert main(fit(configs[6], "single")) == 0
    # With a DataLoader worker the loader's index iterator is created twice per epoch: under
    # Lightning's DistributedSamplerWrapper that advanced the wrapped sampler's epoch twice, and
    # a resumed run replayed other epochs (final weights differed by up to 1.38 before the fix).
    ddp = [*DDP, "--data.init_args.num_workers", "1"]
    _run([*fit(configs[3], "ddp", *ddp, *_recorder(root / "ddp_record"))])
    # resumed from the uninterrupted run's last.ckpt of epoch 0, as a run stopped there would be
    (root / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copy(root / "ddp_record" / "last.ckpt", root / "resumed" / "checkpoints")
    _run(
        [
            *fit(configs[3], "resumed", *ddp, "--ckpt_path", "last"),
            *_recorder(root / "resumed_record"),
        ]
    )
    test = ["test", "--config", str(root / "ddp" / "config.yaml"),
            "--ckpt_path", str(root / "ddp" / "checkpoints" / "last.ckpt")]  # fmt: skip
    _run([*test, *DDP, *_recorder(root / "test_ddp")])
    single = ["--trainer.strategy", "auto", "--trainer.devices", "1"]
    assert main([*test, *single, *_recorder(root / "test_single")]) == 0
    # predict writes <default_root_dir>/predictions.npz
    predict = ["predict", *test[1:]]
    _run([*predict, *DDP, "--trainer.default_root_dir", str(root / "predict_ddp")])
    single_root = ["--trainer.default_root_dir", str(root / "predict_single")]
    assert main([*predict, *single, *single_root]) == 0
    return {"root": root, "data": data, "config": configs[3]}


def test_ddp_loss_is_the_single_process_loss_on_the_global_batch(audio_runs) -> None:
    # ADD statistics over the global batch by default: 2 ranks x 3 clips train exactly like one
    # process with batches of 6 (SGD with momentum, 6 steps, mixup and time masks on).
    root = audio_runs["root"]
    single = _weights(root / "single" / "checkpoints" / "last.ckpt")
    ddp = _weights(root / "ddp" / "checkpoints" / "last.ckpt")
    _assert_same_weights(ddp, single, atol=1e-5)


def test_ddp_resume_equals_the_uninterrupted_run(audio_runs) -> None:
    root = audio_runs["root"]
    # 18 clips, 2 ranks x 3 clips a step: 3 steps an epoch; the resumed run trained epoch 1 only
    assert [record["first_step"] for record in _read(root / "ddp_record", "fit")] == [0, 0]
    assert [record["first_step"] for record in _read(root / "resumed_record", "fit")] == [3, 3]
    # A DataLoader worker forked by a rank of a gloo run hung in 2 of about 300 runs (a lock
    # that the process group's threads held at the fork): the ranks never fork, a fork server
    # (a new program: fork + exec, no Python code between them) starts the workers.
    for run in ("ddp_record", "resumed_record"):
        assert [record["forks"] for record in _read(root / run, "fit")] == [0, 0]
    _assert_same_weights(
        _weights(root / "resumed" / "checkpoints" / "last.ckpt"),
        _weights(root / "ddp" / "checkpoints" / "last.ckpt"),
        atol=1e-6,
    )


def test_ddp_test_metrics_equal_the_single_process_ones(audio_runs) -> None:
    root = audio_runs["root"]
    ddp = _read(root / "test_ddp", "test")
    single = json.loads((root / "test_single" / "test.rank0.json").read_text())
    assert ddp[0] == ddp[1]  # every rank reports the synchronised values
    expected = {"test/loss", "test/acc", "test/f1", "test/ce", "test/add", "test/add/mu_p"}
    assert expected <= single.keys()
    assert any(key.startswith("test/geometry/") for key in single)
    assert ddp[0].keys() == single.keys()
    for key, value in single.items():
        assert ddp[0][key] == pytest.approx(value, rel=1e-5, abs=1e-12), key


def test_ddp_predictions_are_the_single_process_ones(audio_runs) -> None:
    # 9 test clips in 3 batches of 3, dealt 2 + 1 to the ranks: every clip once, merged by id
    from add_lightning.data.datasets.synthetic import synthetic_class_names

    root = audio_runs["root"]
    predictions = {}
    for name in ("predict_ddp", "predict_single"):
        with np.load(root / name / "predictions.npz") as data:
            order = np.argsort(data["clip_ids"])
            keys = ("clip_ids", "embeddings", "logits", "targets")
            predictions[name] = {key: data[key][order] for key in keys}
            predictions[name]["class_names"] = data["class_names"].tolist()
    # rank 0 merged the processes' parts and removed them
    assert [path.name for path in (root / "predict_ddp").glob("predictions*")] == [
        "predictions.npz"
    ]
    ddp, single = predictions["predict_ddp"], predictions["predict_single"]
    assert len(set(single["clip_ids"])) == len(single["clip_ids"]) == 9
    assert ddp["clip_ids"].tolist() == single["clip_ids"].tolist()
    assert ddp["targets"].tolist() == single["targets"].tolist()
    assert ddp["class_names"] == single["class_names"] == synthetic_class_names(3)
    for key in ("embeddings", "logits"):
        np.testing.assert_allclose(ddp[key], single[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_ddp_normalisation_is_computed_once_with_the_same_values(audio_runs) -> None:
    from add_lightning.data import AudioDataModule, FbankOptions, SyntheticDataset
    from add_lightning.data.clip_dataset import ClipDataset

    records = _read(audio_runs["root"] / "ddp_record", "fit")
    assert [record["computed"] for record in records] == [1, 0]  # rank 0 alone
    assert records[0]["normalization"] == records[1]["normalization"]
    # float64 reference over every value of the training clips' raw features
    dataset = SyntheticDataset(
        root=str(audio_runs["data"]), num_classes=3, clips_per_class=9, num_folds=3, duration_s=0.5
    )
    module = AudioDataModule(
        dataset, fold=1, features=FbankOptions(num_mel_bins=32, target_frames=48)
    )
    train = module._split_clips()["train"]
    assert len(train) == 18 and len(module._split_clips()["test"]) == 9
    source = ClipDataset(train, 3, module.features, None)
    values = torch.cat([source.raw_features(i).flatten() for i in range(len(source))]).double()
    mean, std = records[0]["normalization"]
    assert mean == pytest.approx(values.mean().item(), rel=1e-9)
    assert std == pytest.approx(values.std(unbiased=False).item(), rel=1e-9)
    assert np.isfinite([mean, std]).all()
