"""Names of a package imported from their modules on first use (PEP 562).

A package whose ``__init__`` would otherwise import Lightning or torchmetrics for one class
sets ``__getattr__ = lazy_attributes(__name__, {"Name": "package.module", ...})``: a process
that needs only the package's light modules (a DataLoader worker, ``add-lightning figures``)
does not pay for the rest.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, modules: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package`` that imports each name of ``modules`` (name ->
    the dotted module defining it) when it is first asked for."""

    def __getattr__(name: str) -> Any:
        if name in modules:
            return getattr(importlib.import_module(modules[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
