"""Cross-entropy, focal loss, OPL and their composition, against hand-written references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from jsonargparse import ArgumentParser
from test_losses_add import reference_hard

from add_lightning.losses import (
    ADDLoss,
    ClassificationLoss,
    CrossEntropyLoss,
    FocalLoss,
    OrthogonalProjectionLoss,
)
from add_lightning.losses.functional import opl_terms


def _softmax_rows(logits: torch.Tensor) -> list[list[float]]:
    rows = []
    for row in logits.tolist():
        top = max(row)
        exps = [math.exp(v - top) for v in row]
        rows.append([e / sum(exps) for e in exps])
    return rows


def reference_focal(logits, probabilities, gamma, alpha=None):
    """-(1/B) sum_i sum_c alpha_c y_ic (1 - p_ic)^gamma log p_ic, in Python floats."""
    total = 0.0
    for p_row, y_row in zip(_softmax_rows(logits), probabilities.tolist()):
        for c, (p, y) in enumerate(zip(p_row, y_row)):
            weight = 1.0 if alpha is None else alpha[c]
            total -= weight * y * (1.0 - p) ** gamma * math.log(p)
    return total / len(probabilities)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [None, [0.25, 1.0, 2.0, 0.5]], ids=["no_alpha", "alpha"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_focal_matches_reference(gamma, alpha, soft):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=generator, dtype=torch.float64) * 3
    labels = torch.tensor([0, 1, 2, 3, 3, 1])
    targets = F.one_hot(labels, 4).double()
    if soft:
        targets = 0.7 * targets + 0.3 * targets.roll(1, dims=0)
    loss = FocalLoss(gamma=gamma, alpha=alpha)(logits, targets if soft else labels)
    expected = reference_focal(logits, targets, gamma, alpha)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_focal_gamma_zero_is_torch_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, requires_grad=True, generator=generator)
    labels = torch.tensor([0, 2, 1, 1, 0])
    torch.testing.assert_close(
        FocalLoss(gamma=0.0)(logits, labels), F.cross_entropy(logits, labels)
    )


def test_focal_gradient_matches_reference_and_gradcheck():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True, generator=generator)
    labels = torch.tensor([0, 1, 2, 1])
    focal = FocalLoss(gamma=2.0)
    assert torch.autograd.gradcheck(lambda x: focal(x, labels), (logits,))
    # gamma = 2 written with autograd-able tensors
    p = torch.softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
    expected = -((1 - p) ** 2 * torch.log(p)).mean()
    torch.testing.assert_close(focal(logits, labels), expected, rtol=1e-12, atol=1e-12)


def test_focal_confident_logits_and_small_gamma_are_finite():
    logits = torch.tensor([[80.0, -80.0], [0.0, 0.0]], requires_grad=True)
    loss = FocalLoss(gamma=0.5)(logits, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_cross_entropy_soft_and_smoothing_match_reference():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, dtype=torch.float64, generator=generator)
    labels = torch.tensor([0, 1, 2, 3, 0])
    smoothing = 0.1
    probabilities = F.one_hot(labels, 4).double() * (1 - smoothing) + smoothing / 4
    expected = reference_focal(logits, probabilities, gamma=0.0)
    loss = CrossEntropyLoss(label_smoothing=smoothing)
    assert loss(logits, labels).item() == pytest.approx(expected, rel=1e-10)
    soft = F.one_hot(labels, 4).double() * 0.6 + F.one_hot(labels.roll(1), 4).double() * 0.4
    expected_soft = reference_focal(logits, soft, gamma=0.0)
    assert CrossEntropyLoss()(logits, soft).item() == pytest.approx(expected_soft, rel=1e-10)


def test_cross_entropy_under_autocast_is_float32():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, dtype=torch.bfloat16, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = CrossEntropyLoss()(logits, torch.tensor([0, 1, 2, 0]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def reference_opl(z, same_weight):
    """Pairs i != j in float64; same_weight[i][j] in [0, 1] (1 = same class)."""
    unit = [row / torch.sqrt((row * row).sum()) for row in z.double()]
    pos_sum = pos_w = neg_sum = neg_w = 0.0
    for i, j in itertools.permutations(range(len(unit)), 2):
        cos = float((unit[i] * unit[j]).sum())
        w = float(same_weight[i][j])
        pos_sum, pos_w = pos_sum + w * cos, pos_w + w
        neg_sum, neg_w = neg_sum + (1 - w) * abs(cos), neg_w + (1 - w)
    intra = 1.0 - pos_sum / pos_w if pos_w else 0.0
    inter = neg_sum / neg_w if neg_w else 0.0
    return intra, inter


@pytest.mark.parametrize(
    "labels",
    [[0, 0, 1, 1, 2, 2], [0, 1, 2, 3], [5, 5, 5], [0, 0, 1, 2]],
    ids=["balanced", "no_positive_pair", "one_class", "one_pair"],
)
def test_opl_matches_reference(labels):
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(len(labels), 5, dtype=torch.float64, generator=generator)
    y = torch.tensor(labels)
    terms = opl_terms(z, y)
    same = (y[:, None] == y[None, :]).double()
    intra, inter = reference_opl(z, same)
    assert terms["intra"].item() == pytest.approx(intra, abs=1e-12)
    assert terms["inter"].item() == pytest.approx(inter, abs=1e-12)
    total = OrthogonalProjectionLoss(gamma=0.5, weight=0.3)(z, y)
    assert total.item() == pytest.approx(0.3 * (intra + 0.5 * inter), abs=1e-12)


def test_opl_soft_targets_weight_pairs_by_label_similarity():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(5, 4, dtype=torch.float64, generator=generator)
    labels = torch.tensor([0, 1, 1, 2, 0])
    one_hot = F.one_hot(labels, 3).double()
    hard, from_one_hot = opl_terms(z, labels), opl_terms(z, one_hot)
    for key in hard:
        torch.testing.assert_close(from_one_hot[key], hard[key], rtol=1e-12, atol=1e-12)
    soft = one_hot.clone()
    soft[0] = torch.tensor([0.5, 0.5, 0.0])
    unit_labels = F.normalize(soft, dim=1)
    intra, inter = reference_opl(z, unit_labels @ unit_labels.T)
    terms = opl_terms(z, soft)
    assert terms["intra"].item() == pytest.approx(intra, abs=1e-12)
    assert terms["inter"].item() == pytest.approx(inter, abs=1e-12)


def test_opl_degenerate_batches_are_finite():
    generator = torch.Generator().manual_seed(0)
    for z, y in [
        (torch.zeros(3, 4), torch.tensor([0, 0, 1])),
        (torch.ones(3, 4), torch.tensor([0, 0, 1])),
        (torch.randn(1, 4, generator=generator), torch.tensor([0])),
    ]:
        z = z.clone().requires_grad_()
        OrthogonalProjectionLoss()(z, y).backward()
        assert torch.isfinite(z.grad).all()


def test_classification_loss_sums_and_names_terms():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(8, 6, generator=generator)
    logits = torch.randn(8, 4, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    out = ClassificationLoss(CrossEntropyLoss(), ADDLoss())(embeddings, logits, labels)
    ce = F.cross_entropy(logits, labels)
    assert set(out.terms) == {"ce", "add", "add/mu_p", "add/sigma_p", "add/mu_n", "add/sigma_n"}
    add = sum(out.terms[f"add/{k}"] for k in ("mu_p", "sigma_p", "mu_n", "sigma_n"))
    torch.testing.assert_close(out.total, ce + add)
    torch.testing.assert_close(out.terms["ce"], ce)
    focal_only = ClassificationLoss(FocalLoss())(embeddings, logits, labels)
    assert set(focal_only.terms) == {"focal"}
    default = ClassificationLoss()(embeddings, logits, labels)
    torch.testing.assert_close(default.total, ce)


def test_classification_loss_rejects_swapped_roles():
    with pytest.raises(TypeError, match="`classifier`"):
        ClassificationLoss(classifier=ADDLoss())
    with pytest.raises(TypeError, match="`embedding`"):
        ClassificationLoss(embedding=CrossEntropyLoss())


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: FocalLoss(gamma=-1), "`gamma`"),
        (lambda: FocalLoss(alpha=[1.0, -0.5]), "`alpha`"),
        (lambda: CrossEntropyLoss(label_smoothing=1.0), "`label_smoothing`"),
        (lambda: OrthogonalProjectionLoss(weight=-1), "`weight`"),
    ],
    ids=["focal_gamma", "focal_alpha", "smoothing", "opl_weight"],
)
def test_bad_options_are_named(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_focal_alpha_length_must_match_classes():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="3 `alpha` weights but the logits have 4 classes"):
        FocalLoss(alpha=[1.0, 1.0, 1.0])(
            torch.randn(2, 4, generator=generator), torch.tensor([0, 1])
        )


def test_logit_shape_errors_are_named():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="integer `targets`"):
        CrossEntropyLoss()(torch.randn(3, 4, generator=generator), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="soft `targets`"):
        FocalLoss()(torch.randn(3, 4, generator=generator), torch.rand(3, 5, generator=generator))


YAML_SNIPPETS = {
    "ce_add": """
loss:
  class_path: add_lightning.losses.ClassificationLoss
  init_args:
    classifier: {class_path: add_lightning.losses.CrossEntropyLoss}
    embedding: {class_path: add_lightning.losses.ADDLoss}
""",
    "ce_add_1010": """
loss:
  class_path: add_lightning.losses.ClassificationLoss
  init_args:
    embedding:
      class_path: add_lightning.losses.ADDLoss
      init_args: {lambda_mu_p: 1.0, lambda_sigma_p: 0.0, lambda_mu_n: 1.0, lambda_sigma_n: 0.0}
""",
    "focal": """
loss:
  class_path: add_lightning.losses.ClassificationLoss
  init_args:
    classifier: {class_path: add_lightning.losses.FocalLoss, init_args: {gamma: 1.5}}
""",
    "ce_opl": """
loss:
  class_path: add_lightning.losses.ClassificationLoss
  init_args:
    embedding:
      class_path: add_lightning.losses.OrthogonalProjectionLoss
      init_args: {gamma: 0.5, weight: 0.3}
""",
}


@pytest.mark.parametrize("name", list(YAML_SNIPPETS))
def test_losses_are_yaml_snippets(name, tmp_path):
    generator = torch.Generator().manual_seed(0)
    path = tmp_path / "loss.yaml"
    path.write_text(YAML_SNIPPETS[name])
    parser = ArgumentParser()
    parser.add_argument("--config", action="config")
    parser.add_argument("--loss", type=ClassificationLoss)
    loss = parser.instantiate(parser.parse_args(["--config", str(path)])).loss
    assert isinstance(loss, ClassificationLoss)
    embeddings = torch.randn(6, 3, dtype=torch.float64, generator=generator)
    logits = torch.randn(6, 4, dtype=torch.float64, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    out = loss(embeddings, logits, labels)
    # float64 references with the weights the YAML gives (none of them a default)
    ce = F.cross_entropy(logits, labels).item()
    add = {k: v.item() for k, v in reference_hard(embeddings, labels.tolist()).items()}
    intra, inter = reference_opl(embeddings, (labels[:, None] == labels[None, :]).double())
    expected = {
        "ce_add": ce + sum(add.values()),
        "ce_add_1010": ce + add["mu_p"] + add["mu_n"],
        "focal": reference_focal(logits, F.one_hot(labels, 4).double(), gamma=1.5),
        "ce_opl": ce + 0.3 * (intra + 0.5 * inter),
    }[name]
    assert out.total.item() == pytest.approx(expected, rel=1e-9)
