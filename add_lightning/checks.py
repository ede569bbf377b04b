"""Argument checks that raise the package's one message per kind of bad value.

Imports nothing from the package, so that any module can use it.
"""

from __future__ import annotations

import math

__all__ = [
    "check_int",
    "check_number",
    "check_positive",
    "check_range",
    "check_weight",
    "is_number",
]


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


def check_range(
    name: str,
    value: float,
    low: float,
    high: float,
    *,
    include_low: bool = True,
    include_high: bool = True,
) -> None:
    """Raises ``ValueError`` naming argument ``name`` unless ``low <= value <= high`` (``<`` at
    an end that is not included): "... to be in (0, 1] but got 1.5".

    Raises:
        ValueError: If ``value`` is outside the interval or NaN.
    """
    above_low = value >= low if include_low else value > low
    below_high = value <= high if include_high else value < high
    if not (above_low and below_high):  # NaN fails every comparison
        interval = f"{'[' if include_low else '('}{low}, {high}{']' if include_high else ')'}"
        raise ValueError(f"Expected argument `{name}` to be in {interval} but got {value!r}")


def is_number(value: object, integer: bool = False) -> bool:
    """True for finite ints (and floats unless ``integer``), never for bools."""
    valid_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    return valid_type and not isinstance(value, bool) and math.isfinite(value)  # type: ignore[arg-type]


def check_number(name: str, value: object) -> None:
    """Raises ``ValueError`` naming argument ``name`` unless ``value`` is a finite number.

    Raises:
        ValueError: If ``value`` is not an int or float, is a bool, or is infinite or NaN.
    """
    if not is_number(value):
        raise ValueError(f"Expected argument `{name}` to be a finite number but got {value!r}.")


def check_positive(name: str, value: object, integer: bool = False) -> None:
    """Raises ``ValueError`` naming argument ``name`` unless ``value`` is a finite number > 0
    (an int > 0 with ``integer``): "... to be a positive number but got 0.".

    Raises:
        ValueError: If ``value`` is not such a number.
    """
    kind = "integer" if integer else "number"
    if not is_number(value, integer) or value <= 0:  # type: ignore[operator]
        raise ValueError(f"Expected argument `{name}` to be a positive {kind} but got {value!r}.")


def check_weight(name: str, value: float) -> None:
    """Raises ``ValueError`` naming argument ``name`` unless ``value`` is a finite number >= 0
    (a loss weight or exponent).

    Raises:
        ValueError: If ``value`` is negative, infinite or NaN.
    """
    if not (math.isfinite(value) and value >= 0):  # NaN fails every comparison
        raise ValueError(f"Expected argument `{name}` to be a finite number >= 0 but got {value}")
