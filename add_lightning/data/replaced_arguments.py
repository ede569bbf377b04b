"""Arguments of the data modules that objects replaced, and the YAML that replaces each.

``AudioDataModule`` and ``WaveformDataModule`` once took primitive knobs for augmentation and
sampling; they now take objects (``class_path`` in YAML, as ``backbone`` and ``loss``). An old
name given in Python raises :func:`refuse_replaced_arguments`' error; given in a config file,
jsonargparse refuses it ("Option 'freq_mask' is not accepted") and the CLI appends
:func:`replacement_hints`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

_SPEC_AUGMENT = (
    "`spec_augment: {class_path: add_lightning.data.SpecAugment, init_args: {freq_mask: 24, "
    "time_mask: 96}}` (`spec_augment: null`: no masks)"
)

#: Old argument -> what to write instead.
REPLACED_ARGUMENTS: Mapping[str, str] = MappingProxyType(
    {
        "freq_mask": f"`freq_mask` is now {_SPEC_AUGMENT}",
        "time_mask": f"`time_mask` is now {_SPEC_AUGMENT}",
        "mixup_rate": (
            "`mixup_rate` is now `mixup: {class_path: add_lightning.data.Mixup, init_args: "
            "{rate: 0.5}}` (alpha 10 by default; `mixup: null`: no mixup)"
        ),
        "balanced_batches": (
            "`balanced_batches: [P, K]` is now `train_batches: {class_path: "
            "add_lightning.data.ClassBalancedBatches, init_args: {classes_per_batch: P, "
            "clips_per_class: K}}` (`train_batches: null`: shuffled batches of `batch_size`)"
        ),
    }
)

_REFUSED_OPTION = re.compile(r"Option '([A-Za-z_]\w*)' is not accepted")


def refuse_replaced_arguments(owner: str, given: Mapping[str, object]) -> None:
    """Raises a TypeError for keyword arguments ``owner`` does not take (if any are given).

    Args:
        owner: The class whose constructor got them, e.g. ``"AudioDataModule"``.
        given: The unexpected keyword arguments.

    Raises:
        TypeError: Naming each argument, with the YAML that replaces a replaced one.
    """
    if not given:
        return
    lines = [
        REPLACED_ARGUMENTS.get(name, f"`{name}` is not an argument of {owner}")
        for name in sorted(given)
    ]
    raise TypeError(f"{owner} got unexpected arguments: " + "; ".join(lines) + ".")


def replacement_hints(message: str) -> list[str]:
    """What to write instead of each replaced argument that a parser error refuses.

    Args:
        message: A jsonargparse error message ("Option 'freq_mask' is not accepted" lines).
    """
    names = dict.fromkeys(_REFUSED_OPTION.findall(message))  # in order, once each
    return [REPLACED_ARGUMENTS[name] + "." for name in names if name in REPLACED_ARGUMENTS]


__all__ = ["REPLACED_ARGUMENTS", "refuse_replaced_arguments", "replacement_hints"]
