"""Checks of the targets every loss takes: class ids of any integer dtype, or probabilities."""

from __future__ import annotations

import torch
from torch import Tensor

#: How far a row of soft targets may sum from 1 (mixup in float16 rounds to about 1e-3).
PROBABILITY_SUM_TOLERANCE = 1e-2


def checked_targets(targets: Tensor) -> Tensor:
    """Integer class ids as int64; floating targets checked to be class probabilities.

    Raises:
        ValueError: If floating targets hold a negative entry or a row that does not sum to 1
            (a sum of 2 would double the loss, a negative entry make it negative).
    """
    if not targets.is_floating_point():
        if targets.dtype == torch.bool or targets.is_complex():
            raise ValueError(
                f"Expected `targets` to be integer class ids or float probabilities but got "
                f"{targets.dtype}"
            )
        return targets.long()
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
