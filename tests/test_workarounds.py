"""The pieces of :mod:`add_lightning.workarounds` that are checked on their own.

The others are checked through the commands they serve: the one-line config errors in
``test_console.py``, ``--ckpt_path last`` and the replaced model arguments in ``test_cli.py``.
"""

from __future__ import annotations

import pytest
from jsonargparse import ArgumentParser

from add_lightning.workarounds import constructor_error, nested_nulls_as_objects

_MESSAGE = "Expected argument `size` to be 2 but got 1."


class _Refusing:
    """A class whose constructor refuses its argument, as a data set refuses a missing root."""

    def __init__(self, size: int = 1) -> None:
        raise ValueError(_MESSAGE)


def test_null_for_an_argument_of_a_nested_class_is_none():
    argv = ["fit", "--data.init_args.fold", "null", "--a.init_args.b.init_args.c", "null"]
    argv += ["--a.init_args.b.init_args.d.e=~", "--a.init_args.b.init_args.f", "1"]
    assert nested_nulls_as_objects(argv) == [
        "fit",
        "--data.init_args.fold",  # one level: jsonargparse parses it right
        "null",
        "--a.init_args.b={init_args: {c: null}}",
        "--a.init_args.b={init_args: {d: {e: null}}}",
        "--a.init_args.b.init_args.f",
        "1",
    ]


def test_constructor_error_unwraps_jsonargparse_union_error():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--part", type=_Refusing | None)
    config = parser.parse_args(["--part", f"{__name__}._Refusing"])
    with pytest.raises(ValueError) as caught:
        parser.instantiate_classes(config)
    # jsonargparse's Union message, which lists it (if this fails, delete constructor_error)
    assert str(caught.value) != _MESSAGE
    assert str(constructor_error(caught.value)) == _MESSAGE
    plain = ValueError("not a wrapper")
    assert constructor_error(plain) is plain
