"""A mistyped config key in one line: the key, the file it came from, the closest accepted key.

jsonargparse reports an unknown key after the command's whole usage (about 80 lines for
``fit``), and one inside a class's ``init_args`` (``hiden_size`` of the backbone) inside the
dump of every member of a Union. :func:`unknown_key_message` reads that message back into one
line: ``unknown key `model.init_args.backbone.init_args.hiden_size` (not an argument of
add_lightning.models.ASTBackbone) in my.yaml; did you mean `...init_args.hidden_size`?``. Its
input is jsonargparse's message text (4.53): a message of another shape gives None, and the
caller shows jsonargparse's own.
Its one caller is :class:`~add_lightning.workarounds.ShortErrorParser`, and it goes with it.
"""

from __future__ import annotations

import difflib
import importlib
import itertools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["unknown_key_message"]

_SUBCOMMAND_KEY = re.compile(r"Subcommand '[^']+' does not accept option '([^']+)'")
_GROUP_KEY = re.compile(r"Group '([^']+)' does not accept option '([^']+)'")
_OPTION = re.compile(r"Option '([^']+)' is not accepted$")
_UNRECOGNIZED = re.compile(r"^unrecognized arguments: (.*)$", re.IGNORECASE | re.MULTILINE)
_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)'")


def _nested_unknown_key(message: str) -> tuple[str, str | None] | None:
    """The full key and owning class of an ``Option 'x' is not accepted`` line in a dump.

    Each line's context is the lines above it with less indentation: ``Parser key "k":``
    adds ``k``, ``Problem with given class_path 'C':`` adds ``init_args`` (of class C).
    """
    stack: list[tuple[int, str]] = []  # (indentation, line) of the current line's ancestors
    for line in message.splitlines():
        text = line.strip().lstrip("- ")
        indent = len(line) - len(line.lstrip(" -"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        option = _OPTION.search(text)
        if option:
            parts, owner = [], None
            for _, ancestor in stack:
                if key := _PARSER_KEY.match(ancestor):
                    parts.append(key.group(1))
                elif owner_match := _CLASS_PATH.match(ancestor):
                    parts.append("init_args")
                    owner = owner_match.group(1)
            return ".".join([*parts, option.group(1)]), owner
        stack.append((indent, text))
    return None


def _closest(key: str, candidates: Sequence[str]) -> str | None:
    """The accepted key closest to ``key``: a close last part under the same parent, else a
    very close whole key (``trainr.max_epochs``)."""
    parent, _, leaf = key.rpartition(".")
    siblings = [c.rpartition(".")[2] for c in candidates if c.rpartition(".")[0] == parent]
    if close := difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6):
        return f"{parent}.{close[0]}" if parent else close[0]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.8)
    return close[0] if close else None


def _keys(accepted_keys: Callable[[], Sequence[str]] | None) -> list[str]:
    if accepted_keys is None:
        return []
    try:
        return list(accepted_keys())
    except Exception:  # a suggestion must not replace the error being reported
        return []


def _class_arguments(class_path: str) -> list[str]:
    """The argument names that jsonargparse accepts for ``class_path``'s ``init_args``."""
    from jsonargparse import ArgumentParser

    module, _, name = class_path.rpartition(".")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(getattr(importlib.import_module(module), name), fail_untyped=False)
    return list(parser.get_defaults().keys())


def _holds(tree: Any, parts: Sequence[str]) -> bool:
    """Whether nested dicts ``tree`` hold the key ``parts`` (dotted keys allowed at any level)."""
    if not parts:
        return True
    if not isinstance(tree, dict):
        return False
    return any(
        _holds(tree[".".join(parts[:end])], parts[end:])
        for end in range(1, len(parts) + 1)
        if ".".join(parts[:end]) in tree
    )


def _config_files(argv: Sequence[str]) -> list[tuple[Path, Any]]:
    """The ``--config``/``-c`` files of ``argv`` and those they include by ``config:``, each
    with its YAML content (None where it does not load)."""
    given = [
        value
        for flag, value in itertools.pairwise(argv)
        if flag in ("--config", "-c") and Path(value).is_file()
    ] + [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    files: list[tuple[Path, Any]] = []
    pending = [Path(value) for value in given]
    while pending:
        path = pending.pop(0)
        if any(path == seen for seen, _ in files) or not path.is_file():
            continue
        try:
            tree = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            tree = None
        files.append((path, tree))
        included = tree.get("config") if isinstance(tree, dict) else None
        for value in [included] if isinstance(included, str) else included or []:
            pending.append(path.parent / str(value))
    return files


def _source(key: str, argv: Sequence[str]) -> str:
    """Where ``key`` was given: `` in FILE`` (every file holding it), `` on the command line``."""
    parts = key.split(".")
    holders = [str(path) for path, tree in _config_files(argv) if _holds(tree, parts)]
    if holders:
        return " in " + ", ".join(holders)
    if any(arg.lstrip("-").split("=")[0] == key for arg in argv if arg.startswith("--")):
        return " on the command line"
    return ""


def unknown_key_message(
    message: str,
    argv: Sequence[str],
    accepted_keys: Callable[[], Sequence[str]] | None = None,
) -> str | None:
    """One line for jsonargparse's error ``message`` about an unknown key, None for others.

    Args:
        message: jsonargparse's error message.
        argv: The parsed command line (its ``--config`` files are searched for the key).
        accepted_keys: The keys of the parser that refused a top-level key (e.g.
            ``trainer.max_epochs``); None leaves the suggestion out for such keys.

    Returns:
        ``unknown key `KEY` in FILE; did you mean `CLOSEST`?`` (the file and suggestion where
        known); for unrecognized command-line arguments jsonargparse's line with the closest
        keys; None when ``message`` is about something else.
    """
    owner = None
    if found := _UNRECOGNIZED.search(message):
        # keys given on the command line: jsonargparse's line, and the closest accepted keys
        candidates = _keys(accepted_keys)
        given = [arg[2:].split("=")[0] for arg in found.group(1).split() if arg.startswith("--")]
        hints = [f"`--{match}`" for key in given if (match := _closest(key, candidates))]
        return found.group(0) + (f"; did you mean {', '.join(hints)}?" if hints else "")
    if found := _SUBCOMMAND_KEY.search(message):
        key = found.group(1)
        candidates = _keys(accepted_keys)
    elif found := _GROUP_KEY.search(message):
        key = f"{found.group(1)}.{found.group(2)}"
        candidates = _keys(accepted_keys)
    elif nested := _nested_unknown_key(message):
        key, owner = nested
        parent = key.rpartition(".")[0]
        try:
            names = _class_arguments(owner) if owner else []
        except Exception:  # as in _keys
            names = []
        candidates = [f"{parent}.{name}" if parent else name for name in names]
    else:
        return None
    text = f"unknown key `{key}`"
    if owner:
        text += f" (not an argument of {owner})"
    text += _source(key, argv)
    if close := _closest(key, candidates):
        text += f"; did you mean `{close}`?"
    return text
