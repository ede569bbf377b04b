"""Learning-rate schedules against hand-computed per-epoch sequences."""

from __future__ import annotations

import math

import pytest
import torch

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
