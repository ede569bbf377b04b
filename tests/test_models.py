"""AudioClassifier: training, logging, checkpoints, freezing, prediction files, bf16."""

from __future__ import annotations

import math
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from add_lightning.losses import ADDLoss, ClassificationLoss
from add_lightning.models import ASTBackbone, AudioClassifier, ClassPairHeatmaps, EmbeddingWriter

NUM_CLASSES, FRAMES, BINS = 3, 32, 32


class ToyClips(Dataset):
    """Random [T, F] "fbank" clips whose class adds +1 to its own band of frequency bins."""

    def __init__(
        self, size: int, seed: int, soft: bool = False, num_classes: int = NUM_CLASSES
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(size) % num_classes
        self.features = 0.5 * torch.randn(size, FRAMES, BINS, generator=generator)
        band = BINS // num_classes
        for i, label in enumerate(self.labels.tolist()):
            self.features[i, :, label * band : (label + 1) * band] += 1.0
        self.soft = soft

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        label = int(self.labels[index])
        target = torch.tensor(label)
        if self.soft:  # a 0.7 / 0.3 mix with the next class
            num_classes = int(self.labels.max()) + 1
            target = torch.zeros(num_classes)
            target[label], target[(label + 1) % num_classes] = 0.7, 0.3
        return {"features": self.features[index], "target": target, "clip_id": f"clip{index:03d}"}


class ToyData(LightningDataModule):
    """ToyClips for every split; also used by test_cli.py as a YAML ``class_path``."""

    def __init__(
        self, size: int = 24, batch_size: int = 8, soft: bool = False, num_classes: int = 3
    ) -> None:
        super().__init__()
        self.train_set = ToyClips(size, seed=0, soft=soft, num_classes=num_classes)
        self.eval_set = ToyClips(size, seed=1, soft=soft, num_classes=num_classes)
        self.batch_size = batch_size
        self._num_classes = num_classes

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def class_names(self) -> list[str]:
        return ["a", "b", "c", "d", "e", "f"][: self._num_classes]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_set, batch_size=self.batch_size)

    test_dataloader = val_dataloader
    predict_dataloader = val_dataloader


def tiny_backbone(seed: int = 0) -> ASTBackbone:
    torch.manual_seed(seed)
    return ASTBackbone(
        pretrained=None,
        max_length=FRAMES,
        num_mel_bins=BINS,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        patch_size=8,
        frequency_stride=8,
        time_stride=8,
    )


def tiny_model(**kwargs) -> AudioClassifier:
    kwargs.setdefault("loss", ClassificationLoss(embedding=ADDLoss()))  # CE + ADD: logs every term
    kwargs.setdefault("optimizer", lambda params: torch.optim.Adam(params, lr=3e-3))
    return AudioClassifier(tiny_backbone(), NUM_CLASSES, class_names=["a", "b", "c"], **kwargs)


def tiny_trainer(tmp_path, **kwargs) -> Trainer:
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
        "max_epochs": 1,
        "num_sanity_val_steps": 0,
    }
    return Trainer(**{**defaults, **kwargs})


class LossRecorder(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_tiny_model_learns(tmp_path):
    recorder = LossRecorder()
    model = tiny_model()
    trainer = tiny_trainer(tmp_path, max_epochs=6, callbacks=[recorder], limit_val_batches=0)
    trainer.fit(model, datamodule=ToyData())
    first, last = np.mean(recorder.losses[:3]), np.mean(recorder.losses[-3:])
    assert all(math.isfinite(v) for v in recorder.losses)
    assert last < 0.8 * first


def test_logged_metrics(tmp_path):
    model = tiny_model()
    data = ToyData()
    trainer = tiny_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=data)
    keys = set(trainer.callback_metrics)
    expected = {
        "train/loss",
        "train/ce",
        "train/add",
        "train/add/mu_p",
        "train/add/sigma_p",
        "train/add/mu_n",
        "train/add/sigma_n",
        "train/acc",
        "train/f1",
        "train/lr",
        "val/loss",
        "val/acc",
        "val/f1",
        "val/geometry/mu_p",
        "val/geometry/inter_class/cv",
    }
    assert expected <= keys
    assert not any(key.endswith(("class_mean", "class_cv")) for key in keys)
    # val/acc against a reference computed here from the model's logits
    model.eval()
    with torch.no_grad():
        logits = model(data.eval_set.features)
    accuracy = (logits.argmax(-1) == data.eval_set.labels).float().mean()
    metrics = trainer.validate(model, datamodule=data, verbose=False)[0]
    assert metrics["val/acc"] == pytest.approx(float(accuracy), abs=1e-6)
    test_metrics = trainer.test(model, datamodule=data, verbose=False)[0]
    assert {"test/acc", "test/f1", "test/loss", "test/geometry/mu_n"} <= set(test_metrics)


def test_soft_targets_train_and_score_argmax(tmp_path):
    model = tiny_model()
    data = ToyData(soft=True)
    trainer = tiny_trainer(tmp_path, max_epochs=6)
    trainer.fit(model, datamodule=data)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert "train/add/mu" in trainer.callback_metrics
    # val/acc scores the argmax of a soft target (its 0.7 class, the clip's label) against a
    # reference computed here from the trained model's logits
    model.eval()
    with torch.no_grad():
        logits = model(data.eval_set.features)
    accuracy = float((logits.argmax(-1) == data.eval_set.labels).float().mean())
    assert float(trainer.callback_metrics["val/acc"]) == pytest.approx(accuracy, abs=1e-6)
    assert accuracy > 0.5  # learned from the soft targets (chance is 1/3)


def test_checkpoint_round_trip(tmp_path):
    model = tiny_model()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    trainer = tiny_trainer(tmp_path, max_steps=3, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(model, datamodule=ToyData())
    features = ToyClips(4, seed=5).features
    model.eval()
    with torch.no_grad():
        expected = model(features)
    restored = AudioClassifier.load_from_checkpoint(
        checkpoint.best_model_path, backbone=tiny_backbone(seed=1)
    ).eval()
    assert restored.class_names == ["a", "b", "c"]
    with torch.no_grad():
        torch.testing.assert_close(restored(features), expected)


def test_checkpoint_with_other_class_count_is_refused(tmp_path):
    model = tiny_model()
    path = tmp_path / "three.ckpt"
    trainer = tiny_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=ToyData())
    trainer.save_checkpoint(path)
    with pytest.raises(ValueError, match=r"head for 3 classes.*num_classes=5"):
        AudioClassifier.load_from_checkpoint(
            path, backbone=tiny_backbone(), num_classes=5, class_names=None
        )


def test_frozen_backbone_is_left_out_of_optimizer():
    model = tiny_model(freeze_backbone=True)
    optimizer = model.configure_optimizers()
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(model.head.weight), id(model.head.bias)}
    model.train()
    assert model.head.training and not model.backbone.training
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_no_optimizer_is_refused_with_what_to_add():
    # no hidden default: the paper's fine-tuning Adam (lr 6.7e-6) leaves a random AST at chance
    model = AudioClassifier(tiny_backbone(), NUM_CLASSES)
    with pytest.raises(ValueError, match=r"no `optimizer`; set `model.init_args.optimizer`"):
        model.configure_optimizers()


def test_scheduler_is_stepped_per_epoch():
    from add_lightning.models import WarmupExponentialLR

    model = tiny_model(scheduler=lambda optimizer: WarmupExponentialLR(optimizer))
    config = model.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "epoch"
    assert isinstance(config["lr_scheduler"]["scheduler"], WarmupExponentialLR)


def test_embedding_writer(tmp_path):
    model = tiny_model()
    output = tmp_path / "out" / "predictions.npz"
    trainer = tiny_trainer(tmp_path, callbacks=[EmbeddingWriter(str(output))])
    trainer.predict(model, datamodule=ToyData(size=10, soft=True), return_predictions=False)
    with np.load(output) as data:
        assert data["embeddings"].shape == (10, 32) and data["embeddings"].dtype == np.float32
        assert data["logits"].shape == (10, 3) and data["logits"].dtype == np.float32
        assert data["targets"].dtype == np.int64
        np.testing.assert_array_equal(data["targets"], np.arange(10) % 3)  # argmax of soft
        assert data["clip_ids"].tolist() == [f"clip{i:03d}" for i in range(10)]
        assert data["class_names"].tolist() == ["a", "b", "c"]
        model.eval()
        with torch.no_grad():
            expected = model(ToyClips(10, seed=1).features).numpy()
        np.testing.assert_allclose(data["logits"], expected, rtol=1e-4, atol=1e-5)
    assert [p.name for p in output.parent.iterdir()] == ["predictions.npz"]  # no temporaries


def test_test_heatmaps_in_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = tiny_model()
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="", version="")
    trainer = tiny_trainer(tmp_path, logger=logger, callbacks=[ClassPairHeatmaps()])
    trainer.test(model, datamodule=ToyData(), verbose=False)
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    assert {"test/geometry/class_mean", "test/geometry/class_cv"} <= set(events.Tags()["images"])


def test_tensorboard_heatmaps_draw_pairs_without_samples_blank(tmp_path, monkeypatch):
    """Test clips of classes a (2 clips) and b (1 clip) only: the pairs (b, b), (a, c), (b, c)
    and (c, c) have no two distinct samples; they are masked, not drawn as distance 0."""
    model = tiny_model()
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="", version="")
    drawn = {}
    monkeypatch.setattr(
        logger.experiment, "add_figure", lambda tag, figure, step: drawn.setdefault(tag, figure)
    )
    data = ToyData(size=3)
    data.eval_set.labels = torch.tensor([0, 1, 0])  # a, b, a: no clip of c
    trainer = tiny_trainer(tmp_path, logger=logger, callbacks=[ClassPairHeatmaps()])
    trainer.test(model, datamodule=data, verbose=False)
    empty = np.zeros((3, 3), dtype=bool)
    empty[1, 1] = True
    empty[2, :] = empty[:, 2] = True
    for key in ("class_mean", "class_cv"):
        image = drawn[f"test/geometry/{key}"].axes[0].images[0].get_array()
        np.testing.assert_array_equal(np.ma.getmaskarray(image), empty)
    mean = drawn["test/geometry/class_mean"].axes[0].images[0].get_array()
    assert mean[0, 0] > 0 and mean[0, 1] > 0  # the pairs with samples keep their distances


def test_mask_empty_class_pairs_by_hand():
    from add_lightning.metrics import mask_empty_class_pairs

    matrix = torch.arange(9, dtype=torch.float32).reshape(3, 3)
    masked = mask_empty_class_pairs(matrix, torch.tensor([2, 1, 0]))
    nan = float("nan")
    expected = torch.tensor(
        [[0.0, 1.0, nan], [3.0, nan, nan], [nan, nan, nan]], dtype=torch.float64
    )
    torch.testing.assert_close(masked, expected, equal_nan=True)
    with pytest.raises(ValueError, match=r"\[3, 3\].*got \[2, 2\]"):
        mask_empty_class_pairs(torch.zeros(2, 2), torch.tensor([2, 1, 0]))


def test_bf16_mixed_on_cpu(tmp_path):
    losses, dtypes = {}, {}
    for precision in ("bf16-mixed", "32-true"):
        model = tiny_model()  # seeded: both runs start from the same weights and batches
        first_linear = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Linear))
        seen = dtypes.setdefault(precision, set())
        first_linear.register_forward_hook(lambda _, args, output, s=seen: s.add(output.dtype))
        recorder = LossRecorder()
        trainer = tiny_trainer(tmp_path, precision=precision, max_steps=1, callbacks=[recorder])
        trainer.fit(model, datamodule=ToyData())
        losses[precision] = recorder.losses[0]
    # autocast ran: the backbone's matrix products were computed in bfloat16
    assert dtypes == {"bf16-mixed": {torch.bfloat16}, "32-true": {torch.float32}}
    assert math.isfinite(losses["bf16-mixed"])
    # the same loss as float32 within bfloat16's precision (8 bits of mantissa, a few layers)
    assert losses["bf16-mixed"] == pytest.approx(losses["32-true"], rel=3e-2)
    assert losses["bf16-mixed"] != losses["32-true"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"class_names": ["a", "b"]}, ValueError, "3 `class_names`"),
        ({"backbone": torch.nn.Linear(2, 2)}, TypeError, "embedding_dim"),
    ],
    ids=["one-class", "names-count", "backbone-without-dim"],
)
def test_invalid_arguments(kwargs, error, match):
    arguments = {"backbone": tiny_backbone(), "num_classes": NUM_CLASSES, **kwargs}
    with pytest.raises(error, match=match):
        AudioClassifier(**arguments)


def test_writer_rejects_other_suffix():
    with pytest.raises(ValueError, match=r"\.npz"):
        EmbeddingWriter("predictions.csv")


def test_heatmap_rejects_bad_inputs():
    from add_lightning.models.heatmaps import class_pair_heatmap

    with pytest.raises(ValueError, match=r"\[C, C\]"):
        class_pair_heatmap(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="2 `class_names`"):
        class_pair_heatmap(torch.zeros(2, 2), ["a", "b", "c"])
    figure = class_pair_heatmap(torch.tensor([[0.1, float("nan")], [0.9, 0.2]]), ["a", "b"])
    assert figure.axes[0].get_title() == ""


# ------------------------------------------------------ device synchronisations per step
class _HostTensor(torch.Tensor):
    """A tensor copied to the host by ``cpu()``: reading it back does not wait for a device."""


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts, per training step, the calls that would wait for a GPU.

    Those that read tensor values back to the host (``item``, ``bool``/``float``/``int`` of a
    tensor, ``tolist``, ``numpy``, ``cpu``), and the ops whose output size depends on the values
    (``nonzero``, ``unique``, ``bincount``, ``masked_select``, ``repeat_interleave`` with tensor
    repeats). The run is on the CPU: what ``cpu()`` returns is marked a host copy, and reads of
    host copies (and of what is computed from them) are not counted. Left out: data loading (on
    the host, before the batch moves), the optimizer's own reads (its step counts are CPU
    tensors on a GPU too) and the losses' target checks (``losses/functional/_targets.py``).
    """

    READS = frozenset(
        {
            torch.Tensor.item,
            torch.Tensor.__bool__,
            torch.Tensor.__float__,
            torch.Tensor.__int__,
            torch.Tensor.__index__,
            torch.Tensor.tolist,
            torch.Tensor.numpy,
            torch.Tensor.cpu,
            torch.nonzero,
            torch.Tensor.nonzero,
            torch.argwhere,
            torch.unique,
            torch.Tensor.unique,
            torch.bincount,
            torch.Tensor.bincount,
            torch.masked_select,
            torch.Tensor.masked_select,
        }
    )
    REPEATS = frozenset({torch.repeat_interleave, torch.Tensor.repeat_interleave})
    LEFT_OUT = ("torch/optim/", "add_lightning/losses/")  # where the read itself is

    def __init__(self) -> None:
        super().__init__()
        self.step: int | None = None  # the global step counted, None outside the steps
        self.reads: dict[int, list[str]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        is_read = func in self.READS or (func in self.REPEATS and torch.is_tensor(repeats))
        on_host = bool(args) and isinstance(args[0], _HostTensor)
        if self.step is not None and is_read and not on_host:
            stack = traceback.extract_stack()[:-1]
            loading = any("torch/utils/data/" in frame.filename for frame in stack)
            if not (loading or any(part in stack[-1].filename for part in self.LEFT_OUT)):
                caller = next(f for f in reversed(stack) if "/torch/" not in f.filename)
                where = f"{func.__name__} at {Path(caller.filename).name}:{caller.lineno}"
                self.reads.setdefault(self.step, []).append(where)
        if func is torch.Tensor.cpu:
            return result.as_subclass(_HostTensor)  # its clones and values stay host copies
        return result


class _StepWindow(Callback):
    """Counts from each training batch's start (before the module's hooks) to the next one's."""

    def __init__(self, reads: _HostReads) -> None:
        self.reads = reads

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.reads.step = trainer.global_step
        self.reads.reads[trainer.global_step] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # after the last step's hooks
        self.reads.step = None


def test_a_training_step_waits_for_the_device_once(tmp_path):
    # Two epochs of 4 steps (7, 7, 7, 3 clips), the logger writing every 3rd step: every step
    # waits once, for the non-finite loss check; a step whose values the logger writes also
    # copies them to the host, once. The epochs' last steps and the steps after a written one
    # (whose progress-bar value Lightning reads again) add nothing.
    reads = _HostReads()
    trainer = tiny_trainer(
        tmp_path,
        max_epochs=2,
        limit_val_batches=0,
        logger=CSVLogger(str(tmp_path)),
        log_every_n_steps=3,
        callbacks=[_StepWindow(reads)],
    )
    with reads:
        trainer.fit(tiny_model(), datamodule=ToyData(size=24, batch_size=7))
    assert sorted(reads.reads) == list(range(8))
    for step, found in reads.reads.items():
        written = step in (2, 5)  # the 3rd and the 6th
        expected = ["__bool__", "cpu"] if written else ["__bool__"]
        assert [where.split(" at ")[0] for where in found] == expected, (step, found)
