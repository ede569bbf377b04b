"""Every loss refuses the same hard targets: negative class ids, and ids >= C where C is known."""

from __future__ import annotations

import pytest
import torch

from add_lightning.losses import (
    ADDLoss,
    ClassificationLoss,
    CrossEntropyLoss,
    FocalLoss,
    LossOutput,
    OrthogonalProjectionLoss,
)
from add_lightning.losses.functional import add_terms, cross_entropy, focal_loss, opl_terms

NUM_CLASSES = 3
GENERATOR_SEED = 0

# (loss of (embeddings, logits, targets), whether it knows the number of classes)
LOSSES = {
    "ce": (lambda z, logits, y: CrossEntropyLoss()(logits, y), True),
    "ce_functional": (lambda z, logits, y: cross_entropy(logits, y), True),
    "ce_smoothing": (lambda z, logits, y: CrossEntropyLoss(label_smoothing=0.1)(logits, y), True),
    "focal": (lambda z, logits, y: FocalLoss()(logits, y), True),
    "focal_functional": (lambda z, logits, y: focal_loss(logits, y), True),
    "add": (lambda z, logits, y: ADDLoss()(z, y), False),
    "add_functional": (lambda z, logits, y: add_terms(z, y), False),
    "opl": (lambda z, logits, y: OrthogonalProjectionLoss()(z, y), False),
    "opl_functional": (lambda z, logits, y: opl_terms(z, y), False),
    "ce+add": (lambda z, logits, y: ClassificationLoss(embedding=ADDLoss())(z, logits, y), True),
    "focal+opl": (
        lambda z, logits, y: ClassificationLoss(FocalLoss(), OrthogonalProjectionLoss())(
            z, logits, y
        ),
        True,
    ),
}


def _batch(targets: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(GENERATOR_SEED)
    embeddings = torch.randn(len(targets), 8, generator=generator)
    logits = torch.randn(len(targets), NUM_CLASSES, generator=generator)
    return embeddings, logits, torch.tensor(targets)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize(
    ("targets", "value", "position"),
    [([0, 1, 2, -100, 1], -100, 3), ([-1, -1, -1], -1, 0), ([-100] * 4, -100, 0)],
    ids=["ignore_index", "minus_one", "all_ignored"],
)
def test_negative_class_ids_are_refused_by_every_loss(name, targets, value, position):
    # torch's cross-entropy skipped -100 (its ignore_index) and returned NaN when every target
    # was -100; the focal loss raised a RuntimeError from one_hot.
    loss, knows_classes = LOSSES[name]
    expected = f"ids in \\[0, {NUM_CLASSES}\\)" if knows_classes else "ids >= 0"
    with pytest.raises(
        ValueError,
        match=rf"^Expected `targets` to hold class {expected} but got {value} "
        rf"at position {position}$",
    ):
        loss(*_batch(targets))


@pytest.mark.parametrize("name", [name for name, (_, known) in LOSSES.items() if known])
def test_class_ids_beyond_the_logits_are_refused(name):
    loss, _ = LOSSES[name]
    with pytest.raises(ValueError, match=r"class ids in \[0, 3\) but got 3 at position 1$"):
        loss(*_batch([0, 3, 1]))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64])
def test_negative_ids_of_any_integer_dtype_are_refused(dtype):
    embeddings, logits, targets = _batch([1, 0, -3])
    with pytest.raises(ValueError, match="but got -3 at position 2"):
        cross_entropy(logits, targets.to(dtype))
    with pytest.raises(ValueError, match="but got -3 at position 2"):
        add_terms(embeddings, targets.to(dtype))


@pytest.mark.parametrize("name", list(LOSSES))
def test_valid_ids_still_give_a_finite_loss(name):
    # The check must not refuse the largest id, C - 1, nor an embedding loss's ids of C or more.
    loss, knows_classes = LOSSES[name]
    output = loss(*_batch([0, 2, 2, 1] if knows_classes else [0, 7, 7, 1]))
    if isinstance(output, LossOutput):
        output = output.terms
    values = list(output.values()) if isinstance(output, dict) else [output]
    assert all(bool(torch.isfinite(value)) for value in values)
