"""add_lightning.checks: one message per kind of bad argument; the low modules' imports."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

import add_lightning.atomic
import add_lightning.checks
import add_lightning.tensor_utils
from add_lightning.checks import check_int, check_range, check_weight


@pytest.mark.parametrize(
    "module",
    [add_lightning.atomic, add_lightning.checks, add_lightning.tensor_utils],
    ids=lambda m: m.__name__,
)
def test_low_modules_import_nothing_from_the_package(module):
    """The shared helpers (atomic writes, argument checks, tensor helpers) sit below every layer."""
    tree = ast.parse(Path(module.__file__).read_text())
    modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert modules and not [m for m in modules if m is None or m.startswith("add_lightning")]
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]


@pytest.mark.parametrize(
    ("value", "minimum", "message"),
    [
        (0, 1, "Expected argument `n` to be a positive integer but got 0."),
        (True, 1, "Expected argument `n` to be a positive integer but got True."),
        (2.0, 1, "Expected argument `n` to be a positive integer but got 2.0."),
        ("3", 1, "Expected argument `n` to be a positive integer but got '3'."),
        (-1, 0, "Expected argument `n` to be an integer >= 0 but got -1."),
        (4, 5, "Expected argument `n` to be an integer >= 5 but got 4."),
    ],
)
def test_check_int_refuses(value, minimum, message):
    with pytest.raises(ValueError) as error:
        check_int("n", value, minimum)
    assert str(error.value) == message


def test_check_int_accepts():
    check_int("n", 1)
    check_int("n", 0, minimum=0)
    check_int("n", 5, minimum=5)


@pytest.mark.parametrize("value", [-0.5, math.inf, math.nan])
def test_check_weight_refuses(value):
    with pytest.raises(ValueError, match=f"`gamma` to be a finite number >= 0 but got {value}"):
        check_weight("gamma", value)


def test_check_weight_accepts():
    for value in (0.0, 0, 2.5):
        check_weight("gamma", value)


@pytest.mark.parametrize(
    ("value", "include", "message"),
    [
        (1.5, (True, True), "Expected argument `x` to be in [0, 1] but got 1.5"),
        (-0.5, (True, True), "Expected argument `x` to be in [0, 1] but got -0.5"),
        (0.0, (False, True), "Expected argument `x` to be in (0, 1] but got 0.0"),
        (1, (True, False), "Expected argument `x` to be in [0, 1) but got 1"),
        (math.nan, (True, True), "Expected argument `x` to be in [0, 1] but got nan"),
    ],
)
def test_check_range_refuses(value, include, message):
    with pytest.raises(ValueError) as error:
        check_range("x", value, 0, 1, include_low=include[0], include_high=include[1])
    assert str(error.value) == message


def test_check_range_accepts():
    for value in (0, 0.5, 1.0):
        check_range("x", value, 0, 1)
    check_range("x", 1e-9, 0, 1, include_low=False)
    check_range("x", 0.999, 0, 1, include_high=False)
