"""Argument checks that raise the package's one message per kind of bad value.

Imports nothing from the package, so that any module can use it.
"""

from __future__ import annotations

import math

__all__ = ["check_int", "check_weight"]


def check_int(name: str, value: object, minimum: int = 1) -> None:
    """Raises ``ValueError`` naming argument ``name`` unless ``value`` is an int (not a bool)
    of at least ``minimum``: "... to be a positive integer but got 0." for ``minimum=1``, "... to
    be an integer >= 0 but got -1." otherwise.

    Raises:
        ValueError: If ``value`` is not an int, is a bool, or is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"Expected argument `{name}` to be {expected} but got {value!r}.")


def check_weight(name: str, value: float) -> None:
    """Raises ``ValueError`` naming argument ``name`` unless ``value`` is a finite number >= 0
    (a loss weight or exponent).

    Raises:
        ValueError: If ``value`` is negative, infinite or NaN.
    """
    if not (math.isfinite(value) and value >= 0):  # NaN fails every comparison
        raise ValueError(f"Expected argument `{name}` to be a finite number >= 0 but got {value}")
