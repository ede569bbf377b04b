"""add_lightning.tensor_utils: the helpers losses, metrics, backbones and models share."""

from __future__ import annotations

import pytest
import torch

from add_lightning.tensor_utils import compute_dtype, hard_targets, normalize_rows, scale_gradient


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


@pytest.mark.parametrize("scale", [1.0, 1e-30, 1e30], ids=["unit", "tiny", "huge"])
def test_normalize_rows_against_float64(scale):
    """Unit rows at any float32 scale (the squared norm would under/overflow), zero rows zero,
    the input untouched; the gradient is F.normalize's in float64."""
    torch.manual_seed(0)
    reference = torch.randn(5, 3, dtype=torch.float64)
    reference[2] = 0
    rows = (reference * scale).float()
    before = rows.clone()
    z = normalize_rows(rows)
    expected = reference / reference.norm(dim=1, keepdim=True).clamp_min(1e-300)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z.double(), expected, rtol=0, atol=1e-6)
    assert torch.equal(rows, before)
    assert normalize_rows(rows, torch.float64).dtype == torch.float64
    leaf = reference.clone().requires_grad_()
    weight = torch.randn(5, 3, dtype=torch.float64)
    (grad,) = torch.autograd.grad((normalize_rows(leaf) * weight).sum(), leaf)
    leaf_ref = reference.clone().requires_grad_()
    (expected_grad,) = torch.autograd.grad(
        (torch.nn.functional.normalize(leaf_ref, dim=1) * weight).sum(), leaf_ref
    )
    torch.testing.assert_close(grad, expected_grad)
