"""ADDLoss(gather_distributed=True) under DDP equals one process with the whole batch."""

from __future__ import annotations

import os

import pytest
import torch
from gloo_ranks import run_ranks
from torch.nn.parallel import DistributedDataParallel

from add_lightning.losses import ADDLoss, OrthogonalProjectionLoss

BATCH_SPLITS = {"even": [4, 4], "uneven": [5, 3]}


def _data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, generator=generator)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 3])
    model = torch.nn.Linear(6, 5)
    with torch.no_grad():
        model.weight.copy_(torch.randn(5, 6, generator=generator))
        model.bias.copy_(torch.randn(5, generator=generator))
    return x, labels, model


def _make_loss(kind: str):
    if kind == "add":
        return ADDLoss(1.0, 0.5, 2.0, 1.5, gather_distributed=True)
    return OrthogonalProjectionLoss(gather_distributed=True)


def _worker(rank: int, world_size: int, split: list[int], kind: str, out: str) -> None:
    x, labels, model = _data()
    ddp = DistributedDataParallel(model)
    start = sum(split[:rank])
    local = slice(start, start + split[rank])
    loss = _make_loss(kind)(ddp(x[local]), labels[local])
    loss.backward()
    torch.save(
        {"loss": loss.detach(), "grads": [p.grad for p in model.parameters()]},
        os.path.join(out, f"rank{rank}.pt"),
    )


@pytest.mark.parametrize("kind", ["add", "opl"])
@pytest.mark.parametrize("split", BATCH_SPLITS.values(), ids=BATCH_SPLITS.keys())
def test_two_gloo_processes_match_one_process(tmp_path, split, kind):
    run_ranks(_worker, (split, kind, str(tmp_path)))
    x, labels, model = _data()
    expected = _make_loss(kind)(model(x), labels)  # no process group: plain local loss
    expected.backward()
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(result["loss"], expected.detach(), rtol=1e-5, atol=1e-6)
        for grad, param in zip(result["grads"], model.parameters()):
            torch.testing.assert_close(grad, param.grad, rtol=1e-4, atol=1e-6)


def test_gather_is_a_no_op_without_process_group():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, generator=generator)
    y = torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(ADDLoss(gather_distributed=True)(z, y), ADDLoss()(z, y))
