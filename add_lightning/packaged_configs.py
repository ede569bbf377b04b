"""The configs shipped inside the package: ``--config NAME`` and ``add-lightning configs``.

The repository's ``configs/`` folder is also the package's ``add_lightning/configs`` (a link in
the source tree, real files in a wheel), so a pip install carries the same YAML files as a clone.
A ``--config`` value that is no file relative to the current folder is looked up there by name
(``quickstart``, ``quickstart.yaml``, ``configs/quickstart.yaml``, ``model/ast_tiny``), as
Ultralytics resolves ``yolov8n.yaml``; a real file always wins. Packaged files are real files in
the installed package, so their ``config: ../add.yaml`` includes (relative to the including
file, as jsonargparse reads them) compose as in the clone, and with a user's own files.

Only the standard library is imported: resolving names costs nothing before the command runs.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from add_lightning.atomic import atomic_path

__all__ = [
    "PACKAGED_CONFIGS",
    "copy_configs",
    "main",
    "packaged_config_names",
    "resolve_config",
    "resolve_config_arguments",
]

#: The folder of packaged configs (``configs/`` of the repository).
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"

_SUFFIX = ".yaml"
# jsonargparse also reads a --config value as YAML text ('{trainer: {max_epochs: 1}}'); such a
# value is no name and is passed on as it is.
_INLINE_YAML = frozenset(":{}[]\n")


def packaged_config_names() -> list[str]:
    """The names of the packaged configs, sorted: their paths in ``configs/`` without
    ``.yaml`` (``quickstart``, ``model/ast_tiny``, ``loss/ablation/add_0001``)."""
    return sorted(
        path.relative_to(PACKAGED_CONFIGS).with_suffix("").as_posix()
        for path in PACKAGED_CONFIGS.rglob(f"*{_SUFFIX}")
    )


def _name(value: str) -> str:
    # `./configs/model/ast_tiny.yaml` -> `model/ast_tiny`
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if parts[:1] == ("configs",):
        parts = parts[1:]
    return "/".join(parts).removesuffix(_SUFFIX)


def resolve_config(value: str) -> str:
    """The file a ``--config`` value names: ``value`` itself when it is a file (or YAML text),
    else the packaged config of that name.

    Args:
        value: A path relative to the current folder, YAML text, or a packaged config's name
            with or without ``configs/`` and ``.yaml``.

    Returns:
        ``value`` unchanged, or the absolute path of the packaged config.

    Raises:
        FileNotFoundError: If ``value`` is neither a file nor a packaged config; the message
            lists the packaged configs with close names.
    """
    if Path(value).is_file() or _INLINE_YAML.intersection(value):
        return value
    names = packaged_config_names()
    name = _name(value)
    if name in names:
        return str(PACKAGED_CONFIGS / f"{name}{_SUFFIX}")
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.6)
    hint = f"close names: {', '.join(close)}" if close else "no packaged config has a close name"
    raise FileNotFoundError(
        f"Expected --config to be a file or a packaged config, but {value!r} is neither "
        f"({hint}; `add-lightning configs --list` lists them)"
    )


def resolve_config_arguments(arguments: Sequence[str]) -> list[str]:
    """``arguments`` with each ``--config X``, ``--config=X`` and ``-c X`` value resolved by
    :func:`resolve_config`; everything else unchanged."""
    resolved = list(arguments)
    for index, argument in enumerate(resolved):
        if argument.startswith("--config="):
            resolved[index] = "--config=" + resolve_config(argument.removeprefix("--config="))
        elif index > 0 and arguments[index - 1] in ("--config", "-c"):
            resolved[index] = resolve_config(argument)
    return resolved


def copy_configs(destination: str | Path, force: bool = False) -> tuple[list[Path], list[Path]]:
    """Copies every packaged config into ``destination``, keeping the subfolders.

    Args:
        destination: The folder to copy into; created if missing.
        force: Overwrite files that exist; by default they are kept as they are.

    Returns:
        The files written and the existing files kept.
    """
    written, kept = [], []
    for name in packaged_config_names():
        target = Path(destination) / f"{name}{_SUFFIX}"
        if target.exists() and not force:
            kept.append(target)
            continue
        with atomic_path(target) as tmp:
            shutil.copyfile(PACKAGED_CONFIGS / f"{name}{_SUFFIX}", tmp)
        written.append(target)
    return written, kept


def main(argv: Sequence[str]) -> int:
    """``add-lightning configs [DEST] [--force] [--list]``."""
    parser = argparse.ArgumentParser(
        prog="add-lightning configs",
        description="Copy the packaged configs into a folder for editing (`--config NAME` "
        "reads them where they are installed; a file of the same path relative to the current "
        "folder wins).",
    )
    parser.add_argument(
        "destination", nargs="?", default="configs", help="folder to copy into (default: configs)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite files that exist")
    parser.add_argument(
        "--list", action="store_true", help="print the packaged config names; copy nothing"
    )
    arguments = parser.parse_args(list(argv[1:]))
    if arguments.list:
        sys.stdout.write("".join(f"{name}\n" for name in packaged_config_names()))
        return 0
    written, kept = copy_configs(arguments.destination, force=arguments.force)
    sys.stdout.write("".join(f"wrote {path}\n" for path in written))
    if kept:
        sys.stdout.write(
            f"kept {len(kept)} existing file(s) as they were (--force overwrites): "
            f"{', '.join(map(str, kept))}\n"
        )
    return 0
