"""add_lightning.tensor_utils: the helpers losses, metrics, backbones and models share."""

from __future__ import annotations

import pytest
import torch

from add_lightning.tensor_utils import compute_dtype, hard_targets, scale_gradient


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
