"""Sweeps: several experiments that differ in a few settings, run by one ``add-lightning cv``.

Two ways to say what differs, which combine (every variant × every grid point):

- ``--grid KEY=V1,V2 ...``: a cartesian grid. ``KEY`` is a ``fit`` option
  (``model.init_args.optimizer.init_args.lr=1e-4,1e-5``) or ``config``, whose values are config
  files added after the command's own ``--config`` files (``config=configs/loss/ce.yaml,...``).
- ``--variants FILE.yaml``: named variants, for settings that are not a grid (the paper's six
  ablation lambdas, or Table 2's dataset × backbone pairs with their own folds)::

      esc50_ast:
        config: [configs/data/esc50.yaml, configs/experiments/ast_esc50.yaml]
        folds: [1, 2, 3, 4, 5]
      ks2_ast:
        config: [configs/data/speech_commands.yaml, configs/experiments/ast_ks2.yaml]
        folds: null                        # the official split: no folds
      lr_small:
        overrides: {model.init_args.optimizer.init_args.lr: 1.0e-5}

  ``config`` (a file or a list), ``overrides`` (a mapping of ``fit`` options, or a list of
  command line arguments), ``folds`` and ``seeds`` are all optional; ``folds`` and ``seeds``
  replace the command's. Relative config paths are read from the current directory, as
  ``--config`` is.

Each experiment is the sub-directory ``OUTPUT/<name>`` with its own ``experiment.yaml``; the
name joins the variant's name and, per grid key, ``<last part of KEY>=<value>`` (a config
file's stem for ``config``). ``OUTPUT/sweep.yaml`` lists them in order, and
``add-lightning compare OUTPUT`` reads them all.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from add_lightning.experiments.config import ExperimentConfigError, read_yaml_file
from add_lightning.experiments.files import SWEEP_FILENAME

__all__ = ["SWEEP_FILENAME", "Variant", "expand_sweep", "parse_grid", "read_variants"]

_UNSET: Any = object()
_VARIANT_KEYS = {"config", "overrides", "folds", "seeds"}


@dataclass(frozen=True)
class Variant:
    """What one experiment of a sweep adds to the command's configs, overrides, folds, seeds.

    ``folds``/``seeds`` are the command's unless set (``folds=None``: no folds).
    """

    name: str
    configs: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    folds: Any = field(default=_UNSET)
    seeds: Any = field(default=_UNSET)

    def combine(self, other: Variant) -> Variant:
        """This variant followed by ``other`` (its settings win)."""
        name = "_".join(part for part in (self.name, other.name) if part)
        return Variant(
            name,
            self.configs + other.configs,
            self.overrides + other.overrides,
            self.folds if other.folds is _UNSET else other.folds,
            self.seeds if other.seeds is _UNSET else other.seeds,
        )


def _argument(value: Any) -> str:
    """A YAML value as a command line value (``null``, ``true``, ``[1, 2]``, text as is)."""
    return value if isinstance(value, str) else json.dumps(value)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-") or "x"


def parse_grid(items: Sequence[str]) -> list[list[Variant]]:
    """``["KEY=V1,V2", ...]`` -> one list of variants per key (their product is the grid).

    Raises:
        ExperimentConfigError: If an item is not ``KEY=V1[,V2...]``, or a key repeats.
    """
    axes, keys = [], set()
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().removeprefix("--")
        options = [value.strip() for value in values.split(",")]
        if not sep or not key or not all(options):
            raise ExperimentConfigError(
                f"Expected argument `--grid` as KEY=V1,V2,... (e.g. "
                f"trainer.max_epochs=10,20 or config=a.yaml,b.yaml), got {item!r}"
            )
        if key in keys:
            raise ExperimentConfigError(f"Expected each `--grid` key once, got {key!r} twice")
        keys.add(key)
        if key == "config":
            axes.append(
                [Variant(_safe_name(Path(value).stem), configs=(value,)) for value in options]
            )
        else:
            short = key.rsplit(".", 1)[-1]
            axes.append(
                [
                    Variant(_safe_name(f"{short}={value}"), overrides=(f"--{key}", value))
                    for value in options
                ]
            )
    return axes


def _int_list(value: Any, what: str, path: Path) -> list[int] | None:
    if value is None and what == "folds":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return value
    raise ExperimentConfigError(
        f"Expected `{what}` in {path} to be a list of integers"
        f"{' or null' if what == 'folds' else ''}, got {value!r}"
    )


def read_variants(path: str | os.PathLike[str]) -> list[Variant]:
    """Reads a variants file: a mapping of variant name -> settings (see the module).

    Raises:
        ExperimentConfigError: If the file is missing, not a non-empty mapping of mappings, has
            unknown keys, or names a config file that does not exist.
    """
    path = Path(path)
    data = read_yaml_file(path, "variants file")
    if not isinstance(data, dict) or not data:
        raise ExperimentConfigError(
            f"Expected {path} to map variant names to their settings, got {type(data).__name__}"
        )
    variants = []
    for name, settings in data.items():
        where = f"variant {name!r} of {path}"
        settings = {} if settings is None else settings
        if not isinstance(settings, dict) or set(settings) - _VARIANT_KEYS:
            raise ExperimentConfigError(
                f"Expected the {where} to be a mapping with keys among "
                f"{', '.join(sorted(_VARIANT_KEYS))}, got {settings!r}"
            )
        configs = settings.get("config") or []
        configs = [configs] if isinstance(configs, str) else configs
        for config in configs:
            if not isinstance(config, str) or not Path(config).is_file():
                raise ExperimentConfigError(
                    f"Expected the config files of the {where} to exist (relative to the "
                    f"current directory), but {config!r} does not"
                )
        overrides = settings.get("overrides") or []
        if isinstance(overrides, dict):
            overrides = [
                item
                for key, value in overrides.items()
                for item in (f"--{str(key).removeprefix('--')}", _argument(value))
            ]
        elif not isinstance(overrides, list):
            raise ExperimentConfigError(
                f"Expected `overrides` of the {where} to be a mapping or a list, got {overrides!r}"
            )
        variant = Variant(_safe_name(str(name)), tuple(configs), tuple(map(str, overrides)))
        if "folds" in settings:
            variant = replace(variant, folds=_int_list(settings["folds"], "folds", path))
        if "seeds" in settings:
            variant = replace(variant, seeds=_int_list(settings["seeds"], "seeds", path))
        variants.append(variant)
    return variants


def expand_sweep(variants: Sequence[Variant], grid: Sequence[Sequence[Variant]]) -> list[Variant]:
    """Every variant × every grid point, in order; empty when there is no sweep.

    Raises:
        ExperimentConfigError: If two experiments get the same name.
    """
    if not variants and not grid:
        return []
    members = [
        _combine_all([variant, *point])
        for variant in (variants or [Variant("")])
        for point in itertools.product(*grid)
    ]
    names = [member.name for member in members]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ExperimentConfigError(
            f"Expected every experiment of the sweep to have its own name, got {duplicates} twice"
        )
    return members


def _combine_all(parts: Sequence[Variant]) -> Variant:
    result = parts[0]
    for part in parts[1:]:
        result = result.combine(part)
    return result
