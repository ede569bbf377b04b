"""What an experiment is: its composed config, and the hash that identifies it.

``add-lightning cv`` composes the ``--config`` files and overrides once, as ``fit`` would, and
saves the result as ``DIR/experiment.yaml``; every unit then runs that file plus its own seed,
fold and run directory. The hash of the config without those per-unit entries ties unit
results to their experiment.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import yaml

from add_lightning.experiments.files import EXPERIMENT_FILENAME

__all__ = [
    "EXPERIMENT_FILENAME",
    "ExperimentConfigError",
    "compose_config",
    "config_hash",
    "experiment_cli_class",
    "read_yaml_file",
]

# Config entries set per unit, hence not part of what identifies an experiment.
_UNIT_KEYS = (
    ("seed_everything",),
    ("trainer", "default_root_dir"),
    ("data", "init_args", "fold"),
    ("data", "init_args", "seed"),
)


class ExperimentConfigError(ValueError):
    """The experiment directory, its config or the requested folds do not fit together."""


def read_yaml_file(path: str | os.PathLike[str], what: str) -> Any:
    """The content of the YAML file ``path``, the ``what`` of a command (``"variants file"``).

    Raises:
        ExperimentConfigError: In one line naming the file: it does not exist, or is not YAML.
    """
    try:
        with open(path, encoding="utf-8") as stream:
            return yaml.safe_load(stream)
    except FileNotFoundError:
        raise ExperimentConfigError(f"Expected a {what}, but {path} does not exist") from None
    except yaml.YAMLError as error:
        problem = str(error).replace("\n", " ")
        raise ExperimentConfigError(f"The {what} {path} is not valid YAML: {problem}") from None


def experiment_cli_class() -> type:
    """:class:`~add_lightning.lightning_cli.AddLightningCLI` for programmatic use by the runner.

    The runner always passes ``args``; LightningCLI would warn that ``sys.argv`` (the runner's
    own command line) holds arguments too.
    """
    from add_lightning.lightning_cli import AddLightningCLI

    class ExperimentCLI(AddLightningCLI):
        def parse_arguments(self, parser: Any, args: Any) -> None:
            self.config = parser.parse_args(args)

    return ExperimentCLI


def compose_config(
    configs: Sequence[str | os.PathLike[str]], overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Parses config files and command line overrides into one complete config, as ``fit`` would.

    Nothing is instantiated (no weights are loaded, no data is read): the parser of
    :class:`~add_lightning.lightning_cli.AddLightningCLI` only composes and validates the values.

    Raises:
        ExperimentConfigError: If the configs or overrides do not parse (jsonargparse prints why).
    """

    class _ComposeOnly(experiment_cli_class()):  # type: ignore[misc]
        def before_instantiate_classes(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

        def after_instantiate_classes(self) -> None:
            pass

    args = [item for path in configs for item in ("--config", str(path))] + list(overrides)
    try:
        # LightningCLI seeds the process while parsing; keep the caller's RNG state intact.
        with _isolated_rng():
            cli = _ComposeOnly(args=args, run=False)
    except SystemExit as error:
        raise ExperimentConfigError(
            f"The experiment config does not parse (configs {[str(c) for c in configs]}, "
            f"overrides {list(overrides)}); see the error above"
        ) from error
    # skip_unset=False keeps None values (`pretrained: null`) explicit.
    return yaml.safe_load(cli.parser.dump(cli.config, skip_unset=False))


@contextlib.contextmanager
def _isolated_rng() -> Iterator[None]:
    from lightning.pytorch.utilities.seed import isolate_rng

    with isolate_rng(include_cuda=False):
        yield


def _without_unit_keys(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    for keys in _UNIT_KEYS:
        node = config
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(keys[-1], None)
    return config


def config_hash(config: dict[str, Any]) -> str:
    """A short hash identifying an experiment config; the per-unit entries (seed, fold, run
    directory) are left out, so all units of one experiment share it."""
    canonical = json.dumps(_without_unit_keys(config), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
