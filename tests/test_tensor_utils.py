"""add_lightning.tensor_utils: the helpers losses, metrics, backbones and models share."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

import add_lightning.tensor_utils
from add_lightning.tensor_utils import check_weight, compute_dtype, hard_targets, scale_gradient


def test_the_module_imports_nothing_from_the_package():
    tree = ast.parse(Path(add_lightning.tensor_utils.__file__).read_text())
    modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert modules and not [m for m in modules if m is None or m.startswith("add_lightning")]


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.int64, torch.float32),
    ],
)
def test_compute_dtype(dtype, expected):
    assert compute_dtype(torch.zeros(2, dtype=dtype)) == expected


def test_scale_gradient_is_the_identity_with_a_scaled_gradient():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = scale_gradient(x, 0.25)
    torch.testing.assert_close(y, torch.tensor([1.0, -2.0, 3.0]))
    (y * torch.tensor([4.0, 8.0, 1.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 2.0, 0.25]))  # 0.25 x (4, 8, 1)


def test_hard_targets():
    torch.testing.assert_close(hard_targets(torch.tensor([2, 0])), torch.tensor([2, 0]))
    soft = torch.tensor([[0.2, 0.7, 0.1], [0.6, 0.0, 0.4]])
    torch.testing.assert_close(hard_targets(soft), torch.tensor([1, 0]))


@pytest.mark.parametrize("value", [-0.5, math.inf, math.nan])
def test_check_weight_refuses(value):
    with pytest.raises(ValueError, match=f"`gamma` to be a finite number >= 0 but got {value}"):
        check_weight("gamma", value)


def test_check_weight_accepts():
    for value in (0.0, 0, 2.5):
        check_weight("gamma", value)
