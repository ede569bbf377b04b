"""Reads a config file of configs/ as the files state it, without the parser under test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["resolved"]


def _merge(into: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def resolved(path: Path) -> dict[str, Any]:
    """The settings of a config file with its ``config:`` file (relative to it) read first and
    its dotted keys (``model.init_args.x: 1``) nested; parser defaults are not filled in."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    config = resolved(Path(path).parent / raw.pop("config")) if "config" in raw else {}
    for key, value in raw.items():
        *parents, last = key.split(".")
        nested: dict[str, Any] = {last: value}
        for parent in reversed(parents):
            nested = {parent: nested}
        _merge(config, nested)
    return config
