"""ADD loss against a float64 re-statement of the paper's equations (docs/method.md)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from add_lightning.losses import ADDLoss
from add_lightning.losses.functional import add_terms

LAMBDAS = {"mu_p": 0.7, "sigma_p": 1.3, "mu_n": 0.4, "sigma_n": 2.0}


def _std(values: list[torch.Tensor]) -> torch.Tensor:
    if len(values) < 2:
        return torch.zeros((), dtype=torch.float64)
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    if variance.item() == 0:  # zero spread: value 0, and we define its gradient as 0
        return variance * 0.0
    return torch.sqrt(variance)


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    return sum(values) / len(values) if values else torch.zeros((), dtype=torch.float64)


def reference_hard(z: torch.Tensor, y: list[int]) -> dict[str, torch.Tensor]:
    """docs/method.md, hard labels, written pair by pair in float64."""
    z = z.double()
    unit = [row / torch.sqrt((row * row).sum()) for row in z]
    positive, negative = [], []
    for i, j in itertools.permutations(range(len(unit)), 2):
        d = 1.0 - (unit[i] * unit[j]).sum()
        if y[i] == y[j]:
            positive.append(d**2)
        else:
            negative.append((1.0 - d) ** 2)
    return {
        "mu_p": _mean(positive),
        "sigma_p": _std(positive),
        "mu_n": _mean(negative),
        "sigma_n": _std(negative),
    }


def reference_soft(z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """docs/method.md, soft labels, written pair by pair in float64."""
    z, y = z.double(), y.double()
    unit = [row / torch.sqrt((row * row).sum()) for row in z]
    labels = [row / torch.sqrt((row * row).sum()) for row in y]
    batch = len(unit)
    squared_errors, same = [], []
    for i, j in itertools.permutations(range(batch), 2):
        d = 1.0 - (unit[i] * unit[j]).sum()
        d_label = 1.0 - (labels[i] * labels[j]).sum()
        squared_errors.append((d_label - d) ** 2)
        if d_label < 1e-3:
            same.append(d**2)
    return {"mu": sum(squared_errors) / (batch * (batch - 1)), "sigma_p": _std(same)}


COMPOSITIONS = {
    "balanced": [0, 0, 1, 1, 2, 2, 3, 3],
    "unbalanced": [0, 0, 0, 0, 0, 1, 1, 2, 3],
    "one_class": [4, 4, 4, 4, 4],
    "no_positive_pair": [0, 1, 2, 3, 4, 5],
    "one_positive_pair": [0, 1, 2, 2, 3],
    "two_samples_same": [1, 1],
}
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("labels", COMPOSITIONS.values(), ids=COMPOSITIONS.keys())
def test_hard_terms_and_gradients_match_reference(dtype, labels):
    generator = torch.Generator().manual_seed(len(labels))
    base = torch.randn(len(labels), 6, generator=generator, dtype=torch.float64)
    z = base.to(dtype).requires_grad_()
    z_ref = base.clone().requires_grad_()
    targets = torch.tensor(labels)

    terms = add_terms(z, targets)
    expected = reference_hard(z_ref, labels)
    assert terms.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(
            terms[name].double(), expected[name], rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype]
        )

    loss = ADDLoss(*(LAMBDAS[k] for k in ("mu_p", "sigma_p", "mu_n", "sigma_n")))
    loss(z, targets).backward()
    reference_total = sum(LAMBDAS[k] * expected[k] for k in LAMBDAS)
    (grad_ref,) = torch.autograd.grad(reference_total, z_ref)
    assert torch.isfinite(z.grad).all()
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(z.grad.double(), grad_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_soft_terms_and_gradients_match_reference(dtype):
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    lam = 0.3
    one_hot = F.one_hot(torch.tensor([0, 1, 1, 2, 2, 2, 0]), 3).double()
    soft = one_hot.clone()
    soft[0] = lam * one_hot[0] + (1 - lam) * one_hot[3]  # a mixup pair
    z = base.to(dtype).requires_grad_()
    z_ref = base.clone().requires_grad_()

    terms = add_terms(z, soft.to(dtype))
    expected = reference_soft(z_ref, soft)
    tol = TOLERANCE[dtype]
    for name in expected:
        torch.testing.assert_close(terms[name].double(), expected[name], rtol=tol, atol=tol)
    ADDLoss(lambda_mu=0.6, lambda_sigma_p=1.7)(z, soft.to(dtype)).backward()
    (grad_ref,) = torch.autograd.grad(0.6 * expected["mu"] + 1.7 * expected["sigma_p"], z_ref)
    torch.testing.assert_close(z.grad.double(), grad_ref, rtol=tol, atol=tol)


def test_one_hot_soft_targets_equal_weighted_hard_terms():
    """docs/method.md: with one-hot labels, L_mu = (|D_p| mu_p + |D_n| mu_n) / (B (B - 1))."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    z = torch.randn(7, 4, dtype=torch.float64, generator=generator)
    hard = add_terms(z, labels)
    soft = add_terms(z, F.one_hot(labels).double())
    same = (labels[:, None] == labels[None, :]).sum().item() - len(labels)
    different = len(labels) * (len(labels) - 1) - same
    expected_mu = (same * hard["mu_p"] + different * hard["mu_n"]) / (7 * 6)
    torch.testing.assert_close(soft["mu"], expected_mu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(soft["sigma_p"], hard["sigma_p"], rtol=1e-12, atol=1e-12)


def test_hand_computed_orthogonal_case():
    """Two classes on orthogonal axes, two copies each: every term is exactly 0 but mu_n."""
    z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 1.0]], dtype=torch.float64)
    terms = add_terms(z, torch.tensor([0, 0, 1, 1]))
    assert terms == {k: 0.0 for k in ("mu_p", "sigma_p", "mu_n", "sigma_n")}
    # Swap one class: same-class pairs now orthogonal (d = 1), different-class pairs mixed.
    terms = add_terms(z, torch.tensor([0, 1, 0, 1]))
    # D_p = {1, 1, 1, 1} -> mu_p 1, sigma_p 0; D_n: pairs (0,1),(2,3) d=0 -> 1; (0,3),(1,2) d=1
    # -> 0 (both orders each): values {1,1,1,1,0,0,0,0} -> mu 0.5, unbiased std sqrt(2/7).
    torch.testing.assert_close(terms["mu_p"], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(terms["sigma_p"], torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(terms["mu_n"], torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(
        terms["sigma_n"], torch.tensor(math.sqrt(2 / 7), dtype=torch.float64)
    )


def test_gradcheck_float64():
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True, generator=generator)
    loss = ADDLoss(1.0, 0.5, 2.0, 1.5)
    assert torch.autograd.gradcheck(lambda e: loss(e, labels), (z,))
    soft = F.one_hot(labels).double() * 0.8 + 0.2 / 3
    assert torch.autograd.gradcheck(lambda e: loss(e, soft), (z,))


# module-level inputs come from their own seeded stream: test order cannot change them
_GENERATOR = torch.Generator().manual_seed(0)

DEGENERATE = {
    "batch_of_one": (torch.randn(1, 8, generator=_GENERATOR), torch.tensor([3])),
    "one_class": (torch.randn(5, 8, generator=_GENERATOR), torch.zeros(5, dtype=torch.long)),
    "no_same_class_pair": (torch.randn(4, 8, generator=_GENERATOR), torch.arange(4)),
    "one_same_class_pair": (torch.randn(4, 8, generator=_GENERATOR), torch.tensor([0, 0, 1, 2])),
    "identical_embeddings": (torch.ones(6, 8), torch.tensor([0, 0, 0, 1, 1, 1])),
    "zero_vectors": (torch.zeros(4, 8), torch.tensor([0, 0, 1, 1])),
    "some_zero_vectors": (
        torch.cat([torch.zeros(2, 8), torch.randn(3, 8, generator=_GENERATOR)]),
        torch.tensor([0, 0, 0, 1, 1]),
    ),
}


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("case", DEGENERATE.values(), ids=DEGENERATE.keys())
def test_degenerate_batches_are_finite(case, soft):
    embeddings, labels = case
    z = embeddings.clone().requires_grad_()
    targets = F.one_hot(labels, 4).float() if soft else labels
    terms = add_terms(z, targets)
    for name, value in terms.items():
        assert torch.isfinite(value), name
    ADDLoss()(z, targets).backward()
    assert torch.isfinite(z.grad).all()


def test_empty_sets_contribute_zero():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4, 8, dtype=torch.float64, generator=generator)
    terms = add_terms(z, torch.arange(4))
    assert terms["mu_p"] == 0 and terms["sigma_p"] == 0
    terms = add_terms(z, torch.zeros(4, dtype=torch.long))
    assert terms["mu_n"] == 0 and terms["sigma_n"] == 0
    terms = add_terms(z, torch.tensor([0, 0, 1, 2]))  # exactly one pair: 2 elements, std defined
    assert terms["sigma_p"] == 0  # both orders of the one pair share a distance
    terms = add_terms(z[:1], torch.tensor([0]))
    assert all(v == 0 for v in terms.values())


def test_identical_embeddings_have_zero_spread():
    z = torch.ones(6, 8, requires_grad=True)
    terms = add_terms(z, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert terms["sigma_p"].abs() < 1e-6 and terms["sigma_n"].abs() < 1e-6
    ADDLoss()(z, torch.tensor([0, 0, 0, 1, 1, 1])).backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_statistics_in_float32(dtype):
    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(16, 32)
    x = torch.randn(12, 16, generator=generator)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    with torch.autocast("cpu", dtype=dtype):
        embeddings = linear(x)
        assert embeddings.dtype == dtype
        terms = add_terms(embeddings, labels)
        total = ADDLoss()(embeddings, labels)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in linear.parameters())
    reference = reference_hard(embeddings.detach().double(), labels.tolist())
    for name in reference:  # the only error is the low-precision embeddings themselves
        torch.testing.assert_close(terms[name].double(), reference[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("embeddings", "targets", "message"),
    [
        (torch.randn(4, generator=_GENERATOR), torch.arange(4), "`embeddings` to have shape"),
        (torch.randn(4, 3, generator=_GENERATOR), torch.arange(5), "batch size"),
        (
            torch.randn(4, 3, generator=_GENERATOR),
            torch.zeros(4, 2, dtype=torch.long),
            "integer `targets`",
        ),
        (
            torch.randn(4, 3, generator=_GENERATOR),
            torch.rand(4, generator=_GENERATOR),
            "class probabilities",
        ),
    ],
    ids=["1d_embeddings", "batch_mismatch", "2d_integer_targets", "1d_float_targets"],
)
def test_bad_input_is_named(embeddings, targets, message):
    with pytest.raises(ValueError, match=message):
        add_terms(embeddings, targets)


def test_negative_lambda_is_rejected():
    with pytest.raises(ValueError, match="lambda_sigma_n"):
        ADDLoss(lambda_sigma_n=-1.0)


def test_ablation_lambdas_select_terms():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(8, 5, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    terms = add_terms(z, labels)
    total = ADDLoss(1.0, 0.0, 1.0, 0.0)(z, labels)
    torch.testing.assert_close(total, terms["mu_p"] + terms["mu_n"])
