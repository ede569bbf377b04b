"""Checks of the targets every loss takes: class ids of any integer dtype, or probabilities."""

from __future__ import annotations

import torch
from torch import Tensor

#: How far a row of soft targets may sum from 1 (mixup in float16 rounds to about 1e-3).
PROBABILITY_SUM_TOLERANCE = 1e-2


def checked_targets(targets: Tensor, num_classes: int | None = None) -> Tensor:
    """Integer class ids as int64; floating targets checked to be class probabilities.

    Every loss takes its targets through here, so all refuse the same targets: a negative id
    (such as torch's ``ignore_index`` -100, which ``F.cross_entropy`` would skip silently) or,
    where the number of classes is known, an id of ``num_classes`` or more.

    Args:
        targets: Integer class ids [B], or class probabilities [B, C].
        num_classes: The number of classes (the logits' C), or None where it is not known.

    Raises:
        ValueError: If an id is outside ``[0, num_classes)``, or floating targets hold a
            negative entry or a row that does not sum to 1 (a sum of 2 would double the loss, a
            negative entry make it negative).
    """
    if not targets.is_floating_point():
        if targets.dtype == torch.bool or targets.is_complex():
            raise ValueError(
                f"Expected `targets` to be integer class ids or float probabilities but got "
                f"{targets.dtype}"
            )
        targets = targets.long()
        if targets.numel():
            _check_class_ids(targets, num_classes)
        return targets
    if targets.numel():
        lowest = targets.min()
        row_sums = targets.sum(dim=-1)
        worst = (row_sums - 1.0).abs().max()
        # One boolean tensor, so one device synchronisation per call on a GPU.
        if not bool((lowest >= 0) & (worst <= PROBABILITY_SUM_TOLERANCE)):
            raise ValueError(
                "Expected soft `targets` to be class probabilities (entries >= 0, rows summing "
                f"to 1) but got a smallest entry of {lowest.item():.4g} and a row sum of "
                f"{row_sums[(row_sums - 1.0).abs().argmax()].item():.4g}"
            )
    return targets


def _check_class_ids(targets: Tensor, num_classes: int | None) -> None:
    """Raises ValueError naming the first id outside ``[0, num_classes)`` (``[0, inf)``)."""
    lowest, highest = torch.aminmax(targets)
    valid = lowest >= 0 if num_classes is None else (lowest >= 0) & (highest < num_classes)
    # One boolean tensor, so one device synchronisation per call on a GPU; the position of the
    # bad id is looked up only to report it.
    if bool(valid):
        return
    bad = targets < 0 if num_classes is None else (targets < 0) | (targets >= num_classes)
    position = int(bad.flatten().nonzero()[0])
    expected = "ids >= 0" if num_classes is None else f"ids in [0, {num_classes})"
    raise ValueError(
        f"Expected `targets` to hold class {expected} but got {int(targets.flatten()[position])} "
        f"at position {position}"
    )
