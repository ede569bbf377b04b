"""Learning-rate schedules against hand-computed per-epoch sequences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback

from add_lightning.models.optim import WarmupConstantLR, WarmupCosineLR, WarmupExponentialLR


def _epoch_lrs(scheduler_factory, base_lr: float, epochs: int) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=base_lr)
    scheduler = scheduler_factory(optimizer)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()  # once per epoch, as Lightning with interval="epoch"
    return lrs


def test_ast_schedule_warmup_then_times_085():
    # W=5, s=1e-5: s + (1-s) e/5 for e<5, then 0.85^(e-5)
    expected = [1e-5, 0.200008, 0.400006, 0.600004, 0.800002, 1.0, 0.85, 0.7225, 0.614125]
    lrs = _epoch_lrs(lambda o: WarmupExponentialLR(o), 1.0, len(expected))
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_ast_schedule_scales_base_lr():
    expected = [6.7e-6 * f for f in (1e-5, 0.200008, 0.400006, 0.600004, 0.800002, 1.0, 0.85)]
    lrs = _epoch_lrs(lambda o: WarmupExponentialLR(o), 6.7e-6, len(expected))
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_cosine_schedule():
    # W=2, s=0.1, max_epochs=6, f=0.001: cosine over 4 epochs after the warm-up
    f = 0.001
    half_cosine = [1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2, 0.0, 0.0]
    expected = [0.1, 0.55] + [f + (1 - f) * c for c in half_cosine]
    lrs = _epoch_lrs(
        lambda o: WarmupCosineLR(o, max_epochs=6, warmup_epochs=2, warmup_start_factor=0.1),
        1.0,
        len(expected),
    )
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[-1] == pytest.approx(0.001)


def test_constant_schedule():
    expected = [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    lrs = _epoch_lrs(
        lambda o: WarmupConstantLR(o, warmup_epochs=3, warmup_start_factor=0.25), 1.0, 6
    )
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_no_warmup():
    lrs = _epoch_lrs(lambda o: WarmupExponentialLR(o, warmup_epochs=0, gamma=0.5), 1.0, 3)
    assert lrs == pytest.approx([1.0, 0.5, 0.25])


def test_resume_from_state_dict_continues_sequence():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = WarmupExponentialLR(optimizer)
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    fresh_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    resumed = WarmupExponentialLR(fresh_optimizer)
    resumed.load_state_dict(state)
    fresh_optimizer.step()
    resumed.step()
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(0.7225)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda o: WarmupExponentialLR(o, warmup_epochs=-1), "warmup_epochs"),
        (lambda o: WarmupExponentialLR(o, warmup_start_factor=0.0), "warmup_start_factor"),
        (lambda o: WarmupExponentialLR(o, gamma=1.5), "gamma"),
        (lambda o: WarmupCosineLR(o, max_epochs=5, warmup_epochs=5), "max_epochs"),
        (lambda o: WarmupCosineLR(o, max_epochs=10, final_factor=2.0), "final_factor"),
    ],
    ids=["negative-warmup", "zero-start", "gamma-above-1", "max-epochs-short", "final-above-1"],
)
def test_invalid_arguments(factory, match):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=match):
        factory(optimizer)


# ----------------------------------------------------- the schedule's length is the trainer's
class _EpochLR(Callback):
    """The learning rate of every epoch, read from the optimizer when the epoch starts."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit_lrs(tmp_path, max_epochs: int, scheduler, ckpt_path=None, trainer_out=None) -> list:
    """Each epoch's learning rate of a tiny fit (resumed from ``ckpt_path`` if given); the
    trainer is appended to ``trainer_out`` when one is passed."""
    from test_models import ToyData, tiny_model, tiny_trainer

    recorder = _EpochLR()
    model = tiny_model(
        optimizer=lambda params: torch.optim.SGD(params, lr=1.0e-3), scheduler=scheduler
    )
    trainer = tiny_trainer(
        tmp_path,
        max_epochs=max_epochs,
        callbacks=[recorder],
        limit_train_batches=1,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=ToyData(size=6, batch_size=6), ckpt_path=ckpt_path)
    if trainer_out is not None:
        trainer_out.append(trainer)
    return recorder.lrs


def _authors_cosine(epoch: int, epochs: int) -> float:
    """Authors' BEATs schedule in float64: W=5, s=1e-5, f=1e-3, cosine over epochs 5..E."""
    if epoch < 5:
        return 1e-5 + (1 - 1e-5) * epoch / 5
    return 1e-3 + (1 - 1e-3) * 0.5 * (1 + np.cos(np.pi * (epoch - 5) / (epochs - 5)))


def test_cosine_length_follows_trainer_25_epochs(tmp_path):
    lrs = _fit_lrs(tmp_path, 25, lambda o: WarmupCosineLR(o))  # the authors' W, s, f
    expected = [1e-3 * _authors_cosine(e, 25) for e in range(25)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    # hand values: warm-up, top, the cosine's middle (epoch 15 of 5..25), last epoch
    assert lrs[0] == pytest.approx(1e-8, rel=1e-9)
    assert lrs[5] == pytest.approx(1e-3, rel=1e-9)
    assert lrs[15] == pytest.approx(1e-3 * 0.5005, rel=1e-9)
    assert lrs[24] == pytest.approx(1e-3 * (1e-3 + 0.999 * (1 + math.cos(math.pi * 0.95)) / 2))


def test_cosine_length_follows_trainer_2_epochs(tmp_path):
    # W=1, s=0.1, f=0.01 (the quickstart's): epoch 0 warms up, epoch 1 = E - W = 1 cosine epoch
    # starts at 1.0; with the authors' W=5 a 2-epoch run stays in the warm-up (and says so).
    lrs = _fit_lrs(
        tmp_path, 2, lambda o: WarmupCosineLR(o, warmup_epochs=1, warmup_start_factor=0.1)
    )
    assert lrs == pytest.approx([1e-4, 1e-3], rel=1e-12)
    with pytest.warns(UserWarning, match="never leaves the warm-up"):
        lrs = _fit_lrs(tmp_path, 2, lambda o: WarmupCosineLR(o))
    assert lrs == pytest.approx([1e-8, 1e-3 * 0.200008], rel=1e-9)


def test_cosine_3_epochs_reaches_the_end_of_the_trainers_run(tmp_path):
    # W=1, s=0.5, f=0: epochs 1, 2 of a cosine over E - W = 2 epochs: 1, 0.5
    lrs = _fit_lrs(
        tmp_path,
        3,
        lambda o: WarmupCosineLR(o, warmup_epochs=1, warmup_start_factor=0.5, final_factor=0.0),
    )
    assert lrs == pytest.approx([5e-4, 1e-3, 5e-4], rel=1e-12)


def test_explicit_cosine_length_is_kept_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match=r"differs from trainer\.max_epochs=3"):
        lrs = _fit_lrs(
            tmp_path,
            3,
            lambda o: WarmupCosineLR(
                o, max_epochs=5, warmup_epochs=1, warmup_start_factor=0.5, final_factor=0.0
            ),
        )
    # cosine over 4 epochs: 1, (1 + cos(pi / 4)) / 2
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3 * (1 + math.sqrt(0.5)) / 2], rel=1e-12)


def test_resuming_with_more_epochs_keeps_the_checkpoints_cosine_with_a_warning(tmp_path):
    # 3 epochs (W=1, s=0.5, f=0.1: factors 0.5, 1, 0.55), then `--ckpt_path` with max_epochs 5:
    # epochs 3 and 4 run at the final factor of the 3-epoch schedule, as the warning says.
    def scheduler(optimizer):
        return WarmupCosineLR(optimizer, warmup_epochs=1, warmup_start_factor=0.5, final_factor=0.1)

    trainers: list = []
    lrs = _fit_lrs(tmp_path, 3, scheduler, trainer_out=trainers)
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3 * (0.1 + 0.9 * 0.5)], rel=1e-12)
    checkpoint = tmp_path / "three.ckpt"
    trainers[0].save_checkpoint(checkpoint)
    with pytest.warns(UserWarning, match=r"schedule is 3 epochs long and this run has 5"):
        resumed = _fit_lrs(tmp_path, 5, scheduler, ckpt_path=str(checkpoint))
    assert resumed == pytest.approx([1e-4, 1e-4], rel=1e-12)


def test_cosine_without_length_outside_a_trainer_says_so():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupCosineLR(optimizer, warmup_epochs=1)
    optimizer.step()
    scheduler.step()  # epoch 1: the cosine's start needs no length
    optimizer.step()
    with pytest.raises(RuntimeError, match=r"trainer\.max_epochs"):
        scheduler.step()
    with pytest.raises(ValueError, match=r"trainer\.max_epochs"):
        scheduler.set_max_epochs(-1)
