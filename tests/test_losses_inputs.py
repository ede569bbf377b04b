"""Losses and the geometry metric on extreme, empty and malformed input: finite or an error."""

from __future__ import annotations

import math

import pytest
import torch
from test_losses_add import reference_hard

from add_lightning.losses import (
    ADDLoss,
    ClassificationLoss,
    CrossEntropyLoss,
    FocalLoss,
    OrthogonalProjectionLoss,
)
from add_lightning.losses.functional import add_terms, cross_entropy, focal_loss, opl_terms
from add_lightning.metrics import pairwise_geometry

LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e-20, 1e-30], ids=lambda s: f"{s:g}")
def test_add_terms_do_not_depend_on_the_scale_of_the_embeddings(scale):
    # float32 squares overflow above ~1.8e19 and underflow below ~1e-19: F.normalize alone
    # turned such rows into zero vectors (ADD = 1, no gradient: a diverging model looked flat).
    base = torch.randn(6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = reference_hard(base, LABELS.tolist())
    z = (base * scale).float().requires_grad_()
    terms = add_terms(z, LABELS)
    for name, value in expected.items():
        torch.testing.assert_close(terms[name].double(), value, rtol=1e-4, atol=1e-4)
    ADDLoss()(z, LABELS).backward()
    reference = base.clone().requires_grad_()
    sum(reference_hard(reference, LABELS.tolist()).values()).backward()
    # d loss / d(scale * z) = (d loss / d z) / scale
    torch.testing.assert_close(
        z.grad.double() * scale, reference.grad, rtol=1e-3, atol=1e-3 * reference.grad.abs().max()
    )


@pytest.mark.parametrize("scale", [1e20, 1e-20], ids=lambda s: f"{s:g}")
def test_opl_and_geometry_do_not_depend_on_the_scale(scale):
    base = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    for function in (opl_terms, lambda z, y: pairwise_geometry(z, y, 3)):
        expected, scaled = function(base, LABELS), function(base * scale, LABELS)
        for name, value in expected.items():
            torch.testing.assert_close(scaled[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_zero_embedding_stays_zero():
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1e-30, 0.0], [0.0, 2.0]])
    terms = opl_terms(z, torch.tensor([0, 0, 1, 1]))
    # same-class cosines: row 0 is zero (cos 0), rows 2 and 3 are orthogonal unit vectors
    torch.testing.assert_close(terms["intra"], torch.tensor(1.0))


@pytest.mark.parametrize(
    "loss",
    [
        lambda z, logits, y: cross_entropy(logits, y),
        lambda z, logits, y: focal_loss(logits, y),
        lambda z, logits, y: ClassificationLoss(embedding=ADDLoss())(z, logits, y).total,
        lambda z, logits, y: (
            ClassificationLoss(FocalLoss(), OrthogonalProjectionLoss())(z, logits, y).total
        ),
    ],
    ids=["ce", "focal", "ce+add", "focal+opl"],
)
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_empty_batch_gives_zero_with_a_gradient(loss, soft):
    z = torch.zeros(0, 8, requires_grad=True)
    logits = torch.zeros(0, 3, requires_grad=True)
    targets = torch.zeros(0, 3) if soft else torch.zeros(0, dtype=torch.long)
    total = loss(z, logits, targets)
    assert total.item() == 0.0
    total.backward()
    assert logits.grad is not None and logits.grad.shape == (0, 3)


@pytest.mark.parametrize(
    "function",
    [cross_entropy, focal_loss, lambda logits, y: add_terms(logits, y), opl_terms],
    ids=["ce", "focal", "add", "opl"],
)
@pytest.mark.parametrize(
    ("targets", "found"),
    [
        (torch.tensor([[1.2, -0.2, 0.0], [0.0, 1.0, 0.0]]), "smallest entry of -0.2"),
        (torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]), "row sum of 2"),
        (torch.tensor([[0.5, 0.2, 0.0], [0.0, 1.0, 0.0]]), "row sum of 0.7"),
    ],
    ids=["negative", "sum_2", "sum_0.7"],
)
def test_soft_targets_must_be_probabilities(function, targets, found):
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=rf"class probabilities.*{found}"):
        function(torch.randn(2, 3, generator=generator), targets)


@pytest.mark.parametrize(
    "function",
    [cross_entropy, focal_loss, lambda x, y: add_terms(x, y)["mu_p"], opl_terms],
    ids=["ce", "focal", "add", "opl"],
)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_any_integer_class_ids(function, dtype):
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    expected = function(x, LABELS)
    actual = function(x, LABELS.to(dtype))
    if isinstance(expected, dict):
        for name in expected:
            torch.testing.assert_close(actual[name], expected[name])
    else:
        torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0], ids=["nan", "inf", "negative"])
@pytest.mark.parametrize(
    ("factory", "name"),
    [
        (lambda v: ADDLoss(lambda_mu_p=v), "lambda_mu_p"),
        (lambda v: ADDLoss(lambda_mu=v), "lambda_mu"),
        (lambda v: OrthogonalProjectionLoss(gamma=v), "gamma"),
        (lambda v: OrthogonalProjectionLoss(weight=v), "weight"),
        (lambda v: FocalLoss(gamma=v), "gamma"),
        (lambda v: FocalLoss(alpha=[1.0, v]), "alpha"),
        (lambda v: CrossEntropyLoss(label_smoothing=v), "label_smoothing"),
    ],
    ids=["add", "add_soft", "opl_gamma", "opl_weight", "focal_gamma", "focal_alpha", "ce"],
)
def test_loss_weights_must_be_finite_and_non_negative(factory, name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        factory(value)
