"""The ``add-lightning`` console script: one entry point, each command imported when it runs.

This module imports nothing but the standard library (and the exit statuses of
:mod:`add_lightning.exit_statuses`), so ``add-lightning --help`` and the
commands that need no model (``compare``, ``figures``) start without loading torch, Lightning
or transformers. Each command is a ``"module:function"`` in :data:`COMMANDS`; the function
takes the command's arguments (the command name included) and returns the exit status.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI
(:class:`add_lightning.lightning_cli.AddLightningCLI`; run layout in that module).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from add_lightning.exit_statuses import (
    ERROR_STATUS,
    INTERRUPTED_STATUS,
    TRACEBACK_VARIABLE,
    USAGE_STATUS,
)

__all__ = [
    "COMMANDS",
    "ERROR_STATUS",
    "INTERRUPTED_STATUS",
    "TRACEBACK_VARIABLE",
    "USAGE_STATUS",
    "console_main",
    "main",
]

_LIGHTNING = "add_lightning.lightning_cli:run_lightning_cli"
_EXPERIMENTS = "add_lightning.experiments.cli:main"

#: Command name -> (``"module:function"``, one-line summary for ``add-lightning --help``).
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": (_LIGHTNING, "train a model (LightningCLI; compose YAML files with --config)"),
    "validate": (_LIGHTNING, "evaluate a checkpoint on the validation split"),
    "test": (_LIGHTNING, "evaluate a checkpoint on the test split"),
    "predict": (_LIGHTNING, "write embeddings and logits of a split to predictions.npz"),
    "classify": (
        "add_lightning.classify:main",
        "top-k labels of audio files, folders or CSV lists from a checkpoint",
    ),
    "cv": (_EXPERIMENTS, "fit + test every (fold, seed); resumable, parallel, SLURM, sweeps"),
    "search": (_EXPERIMENTS, "an Optuna search over config values (e.g. the ADD weights)"),
    "compare": (_EXPERIMENTS, "a Table-2-like comparison of several experiments"),
    "figures": (_EXPERIMENTS, "the embedding-geometry figures of experiments"),
    "export": ("add_lightning.export:main", "a checkpoint as a transformers folder or ONNX file"),
    "configs": (
        "add_lightning.packaged_configs:main",
        "copy the packaged configs into a folder for editing (--config NAME reads them in place)",
    ),
}

_USAGE = """\
usage: add-lightning COMMAND [ARGS ...]

Audio classification with the Angular Distance Distribution (ADD) loss.

commands:
{commands}

`add-lightning COMMAND --help` describes a command's arguments.
"""


def _help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return _USAGE.format(commands="\n".join(lines))


def _command(target: str) -> Callable[[Sequence[str]], Any]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> Any:
    """Runs ``add-lightning COMMAND ARGS``; returns the command's exit status.

    Without a command, or with ``--help``/``-h`` alone, prints the list of commands. A
    ``--config`` value that is no file names a packaged config (``--config quickstart``).
    """
    from add_lightning.packaged_configs import resolve_config_arguments

    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help"):
        sys.stdout.write(_help())
        return 0
    arguments = resolve_config_arguments(arguments)
    if arguments[0].startswith("-"):  # e.g. `--print_config`: LightningCLI's own options
        return _command(_LIGHTNING)(arguments)
    if arguments[0] not in COMMANDS:
        sys.stderr.write(
            f"add-lightning: error: unknown command {arguments[0]!r}; expected one of "
            f"{', '.join(COMMANDS)} (see `add-lightning --help`).\n"
        )
        return USAGE_STATUS
    return _command(COMMANDS[arguments[0]][0])(arguments)


# What a user's data, paths, configs or numbers cause (AudioError and the config errors are
# ValueErrors); anything else is a bug and keeps its traceback.
_USER_ERRORS = (ValueError, OSError, FloatingPointError)


def console_main(argv: Sequence[str] | None = None) -> int:
    """The ``add-lightning`` console script: :func:`main`, with user errors in one line.

    A bad path, config value or data file ends the command with ``add-lightning: error:
    <message>`` on stderr and exit status 1, instead of a 40-line traceback whose last line is
    the message. ``ADD_LIGHTNING_TRACEBACK=1`` shows the traceback too. Ctrl+C ends it with
    ``add-lightning: interrupted`` and status 130 (README, "Exit statuses").
    """
    try:
        return main(argv)
    except KeyboardInterrupt:
        return _interrupted()
    except SystemExit as exit_:
        # Lightning answers Ctrl+C in fit/validate/test/predict with a graceful shutdown and
        # `sys.exit(1)` raised while handling the KeyboardInterrupt (trainer/call.py).
        if isinstance(exit_.__context__, KeyboardInterrupt):
            return _interrupted()
        raise
    except _USER_ERRORS as error:
        if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            raise
        kind = type(error).__name__
        sys.stderr.write(
            f"add-lightning: error: {error}\n({kind}; set {TRACEBACK_VARIABLE}=1 for the "
            "traceback)\n"
        )
        return ERROR_STATUS


def _interrupted() -> int:
    sys.stdout.flush()
    sys.stderr.write("add-lightning: interrupted\n")
    return INTERRUPTED_STATUS


if __name__ == "__main__":
    raise SystemExit(console_main())
