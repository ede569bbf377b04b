"""The search space of ``add-lightning search``: which config values a trial sets, in which range.

A YAML file with ``parameters`` (required) and ``enqueue`` (optional)::

    parameters:
      lambda_mu_p: {low: 0.0, high: 2.0}                # uniform float
      lambda_sigma_n: {low: 0.0, high: 2.0, step: 0.25}  # on a grid
      lr: {low: 1.0e-4, high: 1.0e-2, log: true}         # log-uniform
      data.init_args.batch_size: {choices: [16, 32]}     # categorical (or just [16, 32])
      trainer.max_epochs: {low: 5, high: 20}             # int: the entry holds an int
    enqueue:                                             # tried first, in order
      - {lambda_mu_p: 1.0, lambda_sigma_n: 1.0}

A key is a config entry's dotted path as ``fit`` takes it (``model.init_args.optimizer.init_args
.lr``; ``init_args`` may be left out, as jsonargparse allows), or its last parts when they name
one entry of the composed config (``lambda_mu_p``, ``optimizer.lr``). A range is an int
range when the entry holds an int (``type: int`` or ``type: float`` says it explicitly).
Every key is resolved against the experiment's composed config, so a typo is an error before
anything runs.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from add_lightning.experiments.config import ExperimentConfigError, read_yaml_file

__all__ = ["Parameter", "SearchSpace", "read_search_space", "yaml_scalar"]

_FILE_KEYS = {"parameters", "enqueue"}
_RANGE_KEYS = {"low", "high", "log", "step", "type"}
_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Parameter:
    """One searched config value.

    Attributes:
        name: The name in the search-space file and in Optuna (``lambda_mu_p``).
        key: The config entry's full dotted path (``model.init_args.loss.init_args...``).
        kind: ``"float"``, ``"int"`` or ``"categorical"``.
        low, high, log, step: The range (float and int).
        choices: The values (categorical).
    """

    name: str
    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        """The Optuna distribution of this parameter."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), self.log, int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), self.log, self.step)

    def as_dict(self) -> dict[str, Any]:
        """The resolved parameter as ``search.yaml`` records it."""
        if self.kind == "categorical":
            return {"key": self.key, "choices": list(self.choices)}
        spec = {"key": self.key, "type": self.kind, "low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return spec


@dataclass(frozen=True)
class SearchSpace:
    """The parameters of a search and the trials to try first.

    Attributes:
        parameters: By name, in the file's order.
        enqueue: Parameter values (by name, possibly a subset) of the first trials.
    """

    parameters: dict[str, Parameter]
    enqueue: tuple[dict[str, Any], ...] = ()

    def distributions(self) -> dict[str, Any]:
        """``{name: optuna distribution}`` for ``Study.ask``."""
        return {name: parameter.distribution() for name, parameter in self.parameters.items()}

    def overrides(self, values: Mapping[str, Any]) -> list[str]:
        """The ``fit`` command line arguments that set a trial's ``values`` (by name)."""
        return [
            item
            for name, value in values.items()
            for item in (f"--{self.parameters[name].key}", yaml_scalar(value))
        ]

    def as_dict(self) -> dict[str, Any]:
        """The resolved space as ``search.yaml`` records it (:meth:`from_dict` reads it)."""
        return {
            "parameters": {name: p.as_dict() for name, p in self.parameters.items()},
            "enqueue": [dict(values) for values in self.enqueue],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        """The space that :meth:`as_dict` recorded (keys resolved already)."""
        parameters = {
            name: Parameter(
                name,
                spec["key"],
                spec.get("type", "categorical"),
                spec.get("low"),
                spec.get("high"),
                spec.get("log", False),
                spec.get("step"),
                tuple(spec.get("choices") or ()),
            )
            for name, spec in data["parameters"].items()
        }
        return cls(parameters, tuple(data.get("enqueue") or ()))


def yaml_scalar(value: Any) -> str:
    """A value as a command line argument that jsonargparse reads back as the same value.

    YAML is what jsonargparse parses arguments with: ``1e+39`` would be a string there, while
    ``1.0e+39`` is a float, and a string ``"null"`` must stay quoted.
    """
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _leaves(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (path, value) of a composed config whose value is not a mapping."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, str(key)))
    elif path:
        yield path, node


def _short(path: Sequence[str]) -> tuple[str, ...]:
    return tuple(part for part in path if part != "init_args")


def _resolve_key(name: str, config: dict[str, Any], where: str) -> tuple[str, Any]:
    """The full dotted path of the config entry that ``name`` names, and its current value.

    Raises:
        ExperimentConfigError: If no entry or several entries end with ``name``, or the entry
            is a whole section (a mapping).
    """
    wanted = _short(name.removeprefix("--").split("."))
    leaves = dict(_leaves(config))
    matches = [path for path in leaves if _short(path)[-len(wanted) :] == wanted]
    if not matches:
        if any(
            _short(path[:cut])[-len(wanted) :] == wanted
            for path in leaves
            for cut in range(1, len(path))
        ):
            raise ExperimentConfigError(
                f"Expected search-space key `{name}` of {where} to name one value, but it names "
                "a section of the config: name a value inside it (e.g. its init_args.NAME)"
            )
        known = sorted({".".join(_short(path)) for path in leaves})
        close = difflib.get_close_matches(".".join(wanted), known, n=3, cutoff=0.6)
        close += difflib.get_close_matches(
            wanted[-1], sorted({path[-1] for path in leaves}), n=3, cutoff=0.6
        )
        hint = f"; did you mean {', '.join(dict.fromkeys(close))}?" if close else ""
        raise ExperimentConfigError(
            f"Expected search-space key `{name}` of {where} to name an entry of the experiment's "
            f"config (a dotted path such as model.init_args.optimizer.init_args.lr, or its last "
            f"parts), but the config has no entry `{name}`{hint}"
        )
    if len(matches) > 1:
        found = ", ".join(".".join(path) for path in matches)
        raise ExperimentConfigError(
            f"Expected search-space key `{name}` of {where} to name one entry of the config, but "
            f"it names {len(matches)}: {found}; write more of the path"
        )
    (path,) = matches
    return ".".join(path), leaves[path]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parameter(name: str, spec: Any, config: dict[str, Any], where: str) -> Parameter:
    """One parameter of the file, checked and resolved.

    Raises:
        ExperimentConfigError: Naming the key, for an unknown key or a bad range.
    """
    key, current = _resolve_key(name, config, where)
    what = f"search-space key `{name}` of {where}"
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise ExperimentConfigError(
            f"Expected {what} to map to a range ({{low: 0.0, high: 2.0}}) or choices "
            f"({{choices: [16, 32]}}), got {spec!r}"
        )
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"}:
            extra = ", ".join(sorted(set(spec) - {"choices"}))
            raise ExperimentConfigError(
                f"Expected {what} to have `choices` alone, got also {extra}"
            )
        if not isinstance(choices, list) or not choices:
            raise ExperimentConfigError(f"Expected `choices` of {what} to be a non-empty list")
        if not all(isinstance(choice, _SCALARS) for choice in choices):
            raise ExperimentConfigError(
                f"Expected `choices` of {what} to be numbers, strings, booleans or null, got "
                f"{choices!r}"
            )
        if len({yaml_scalar(choice) for choice in choices}) != len(choices):
            raise ExperimentConfigError(f"Expected distinct `choices` of {what}, got {choices!r}")
        return Parameter(name, key, "categorical", choices=tuple(choices))
    unknown = set(spec) - _RANGE_KEYS
    if unknown:
        raise ExperimentConfigError(
            f"Expected {what} to have keys among choices, {', '.join(sorted(_RANGE_KEYS))}, got "
            f"{', '.join(sorted(unknown))}"
        )
    low, high, log, step = (
        spec.get("low"),
        spec.get("high"),
        spec.get("log", False),
        spec.get("step"),
    )
    if not (_is_number(low) and _is_number(high)):
        raise ExperimentConfigError(
            f"Expected {what} to have finite numbers `low` and `high`, got low={low!r}, "
            f"high={high!r}"
        )
    if low > high:
        raise ExperimentConfigError(f"Expected low <= high for {what}, got {low} > {high}")
    if not isinstance(log, bool):
        raise ExperimentConfigError(f"Expected `log` of {what} to be true or false, got {log!r}")
    if log and low <= 0:
        raise ExperimentConfigError(f"Expected low > 0 for the log range of {what}, got {low}")
    if step is not None and (not _is_number(step) or step <= 0 or log):
        raise ExperimentConfigError(
            f"Expected `step` of {what} to be a number > 0 on a range without log, got {step!r}"
            + (" with log: true" if log else "")
        )
    kind = spec.get("type")
    if kind is None:
        kind = "int" if isinstance(current, int) and not isinstance(current, bool) else "float"
    if kind not in ("int", "float"):
        raise ExperimentConfigError(f"Expected `type` of {what} to be int or float, got {kind!r}")
    if kind == "int" and not all(
        isinstance(v, int) and not isinstance(v, bool) for v in (low, high, step or 1)
    ):
        raise ExperimentConfigError(
            f"Expected integers low, high and step for {what} (the entry {key} holds an int), "
            f"got low={low!r}, high={high!r}, step={step!r}; or set `type: float`"
        )
    return Parameter(name, key, kind, low, high, log, step)


def read_search_space(path: str | os.PathLike[str], config: dict[str, Any]) -> SearchSpace:
    """Reads and checks a search-space file against an experiment's composed ``config``.

    Raises:
        ExperimentConfigError: In one line naming the file and the key: a missing or unreadable
            file, an unknown key (no config entry, or several), a bad range or choice list, two
            keys for one entry, or an ``enqueue`` entry naming no parameter.
    """
    path = Path(path)
    data = read_yaml_file(path, "search-space file")
    if not isinstance(data, dict) or not isinstance(data.get("parameters"), dict):
        raise ExperimentConfigError(
            f"Expected {path} to map `parameters` to the searched config values, got "
            f"{type(data).__name__ if not isinstance(data, dict) else sorted(data)}"
        )
    unknown = set(data) - _FILE_KEYS
    if unknown:
        raise ExperimentConfigError(
            f"Expected the keys of {path} to be among {', '.join(sorted(_FILE_KEYS))}, got "
            f"{', '.join(sorted(unknown))}"
        )
    if not data["parameters"]:
        raise ExperimentConfigError(f"Expected at least one parameter in {path}, got none")
    parameters: dict[str, Parameter] = {}
    for name, spec in data["parameters"].items():
        parameter = _parameter(str(name), spec, config, str(path))
        twin = next((p for p in parameters.values() if p.key == parameter.key), None)
        if twin is not None:
            raise ExperimentConfigError(
                f"Expected each config entry once in {path}, got `{twin.name}` and `{name}` "
                f"both for {parameter.key}"
            )
        parameters[parameter.name] = parameter
    enqueue = data.get("enqueue") or []
    if not isinstance(enqueue, list) or not all(isinstance(item, dict) for item in enqueue):
        raise ExperimentConfigError(
            f"Expected `enqueue` of {path} to be a list of mappings of parameter values"
        )
    for item in enqueue:
        for name in item:
            if name not in parameters:
                raise ExperimentConfigError(
                    f"Expected the keys of `enqueue` in {path} to be parameters "
                    f"({', '.join(parameters)}), got `{name}`"
                )
    return SearchSpace(parameters, tuple(dict(item) for item in enqueue))
