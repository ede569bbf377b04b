"""The training step's one wait for the device: the check that the loss is finite."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["check_finite_loss"]


def check_finite_loss(
    values: dict[str, Tensor], batch: dict[str, Any], stage: str, epoch: int, step: int
) -> None:
    """Raises FloatingPointError if the loss or one of its terms is NaN or infinite.

    One check, one device synchronisation, for all the values: training on (or reporting) a
    non-finite loss would only hide its cause. The message names the terms, says whether the
    input features are finite and which clips the batch held.

    Args:
        values: ``{"loss": total, **terms}``, 0-dim tensors.
        batch: The batch (``features``, optionally ``clip_id``).
        stage: ``"train"``, ``"val"`` or ``"test"``.
        epoch: The current epoch, for the message.
        step: The global step, for the message.
    """
    if torch.isfinite(torch.stack([value.float() for value in values.values()])).all():
        return
    terms = [name for name, value in values.items() if name != "loss"]
    bad_terms = [name for name in terms if not torch.isfinite(values[name])]
    features_finite = bool(torch.isfinite(batch["features"]).all())
    clips = list(batch.get("clip_id") or [])
    raise FloatingPointError(
        f"The {stage} loss is {values['loss'].item()} at epoch {epoch}, global step {step} "
        f"(non-finite terms: {', '.join(bad_terms) or 'none'}; the input features are "
        f"{'finite' if features_finite else 'NOT finite'}; first clips: {clips[:4]}). With "
        "finite features this means diverging weights: lower the learning rate, or use "
        "float32/bf16 instead of fp16."
    )
