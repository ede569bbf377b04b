"""Static checks of the package's structure: public Lightning/jsonargparse names, no import cycle.

Both read the sources of ``add_lightning/`` with :mod:`ast`; nothing is run but the imports of
the package's own modules (to find the Lightning base classes of its classes).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "add_lightning"

#: Top-level packages whose ``_``-prefixed names are private to them.
FOREIGN = (
    "lightning",
    "lightning_fabric",
    "lightning_utilities",
    "pytorch_lightning",
    "jsonargparse",
)


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _foreign(module: str | None) -> bool:
    return module is not None and module.split(".")[0] in FOREIGN


def _chain(node: ast.expr) -> list[str]:
    """``a.b.c`` as ``["a", "b", "c"]``; ``[]`` when the chain starts with a call or subscript."""
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return []
    return [node.id, *reversed(names)]


def _base_private_names(cls: type) -> set[str]:
    """Private names that the Lightning/jsonargparse classes of ``cls``'s MRO define.

    Class attributes (methods, constants) and the ``self._x`` attributes their methods assign.
    """
    names: set[str] = set()
    for base in cls.__mro__:
        if not _foreign(base.__module__):
            continue
        names.update(name for name in vars(base) if _private(name))
        try:
            source = textwrap.dedent(inspect.getsource(base))
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            chain = _chain(node) if isinstance(node, ast.Attribute) else []
            if len(chain) == 2 and chain[0] == "self" and _private(chain[1]):
                names.add(chain[1])
    return names


def private_uses(path: Path, module_name: str | None = None) -> list[str]:
    """``file:line: what`` for each private Lightning/jsonargparse name ``path`` uses.

    Found: imports of ``_``-prefixed modules or names of those packages, attribute access
    ``pkg._x`` through an imported package, ``trainer._x`` and ``strategy._x`` (as names or
    attributes), and ``self._x`` in a class whose Lightning/jsonargparse bases define ``_x``
    (found by importing ``module_name`` and reading the bases' sources).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    aliases: set[str] = set()  # local names bound to a Lightning/jsonargparse module

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{path.name}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _foreign(alias.name):
                    aliases.add(alias.asname or alias.name.split(".")[0])
                    if any(_private(part) for part in alias.name.split(".")):
                        report(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and not node.level and _foreign(node.module):
            assert node.module is not None
            if any(_private(part) for part in node.module.split(".")):
                report(node, f"from {node.module} import ...")
            for alias in node.names:
                if _private(alias.name):
                    report(node, f"from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        chain = _chain(node)
        owner = node.value
        owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
        if owner_name in ("trainer", "strategy"):
            report(node, f"{owner_name}.{node.attr}")
        elif chain and chain[0] in aliases:
            report(node, ".".join(chain))
    if module_name is None:
        return found
    module = importlib.import_module(module_name)
    for class_node in ast.walk(tree):
        if not isinstance(class_node, ast.ClassDef):
            continue
        cls = getattr(module, class_node.name, None)
        if not isinstance(cls, type):
            continue
        base_names = _base_private_names(cls)
        for node in ast.walk(class_node):
            chain = _chain(node) if isinstance(node, ast.Attribute) else []
            if len(chain) == 2 and chain[0] == "self" and chain[1] in base_names:
                report(node, f"self.{chain[1]} (defined by a base class of {cls.__name__})")
    return found


def test_private_name_scan_finds_each_kind(tmp_path: Path) -> None:
    # what the scan must catch, written out; and public uses that it must leave alone
    source = tmp_path / "sample.py"
    source.write_text(
        "import jsonargparse\n"
        "import lightning.pytorch._graveyard\n"
        "from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters\n"
        "from jsonargparse._common import Action\n"
        "from lightning.pytorch import Trainer, _logger\n"
        "from add_lightning._private import helper\n"
        "from jsonargparse import ArgumentParser\n"
        "def f(trainer, module):\n"
        "    jsonargparse._namespace\n"
        "    trainer._checkpoint_connector\n"
        "    module.trainer.strategy._launcher\n"
        "    module.trainer.global_step\n"
        "    module._own\n"
        "    trainer.__class__\n"
    )
    assert private_uses(source) == [
        "sample.py:2: import lightning.pytorch._graveyard",
        "sample.py:3: from lightning.pytorch.core.mixins.hparams_mixin"
        " import _given_hyperparameters",
        "sample.py:4: from jsonargparse._common import ...",
        "sample.py:5: from lightning.pytorch import _logger",
        "sample.py:9: jsonargparse._namespace",
        "sample.py:10: trainer._checkpoint_connector",
        "sample.py:11: strategy._launcher",
    ]


def test_private_name_scan_finds_base_class_internals() -> None:
    # `_get`, `_parser` (methods) and `_trainer` (assigned in __init__) are Lightning's;
    # `_own` is the subclass's
    from lightning.pytorch import LightningModule
    from lightning.pytorch.cli import LightningCLI

    assert {"_get", "_parser", "_instantiate_trainer"} <= _base_private_names(LightningCLI)
    assert "_trainer" in _base_private_names(LightningModule)
    assert "_own" not in _base_private_names(LightningModule)


def test_package_uses_only_public_lightning_and_jsonargparse_names() -> None:
    found = [
        use for name, path in _modules().items() for use in private_uses(path, module_name=name)
    ]
    assert found == [], "private Lightning/jsonargparse names used:\n" + "\n".join(found)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at module level or inside functions.

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``;
    relative imports are resolved. A package's implicit import by its submodules is no edge.
    """
    modules = _modules(package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package_name = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                target = node.module
                if node.level:
                    parts = package_name.split(".")[: len(package_name.split(".")) - node.level + 1]
                    target = ".".join([*parts, *([node.module] if node.module else [])])
                if target is None:
                    continue
                for alias in node.names:
                    if f"{target}.{alias.name}" in modules:
                        graph[name].add(f"{target}.{alias.name}")
                    elif target in modules:
                        graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the graph, None when it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"a"}}, ["a", "a"]),
        ({"a": {"b", "c"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_find_cycle(graph: dict[str, set[str]], expected: list[str] | None) -> None:
    assert find_cycle(graph) == expected


def test_import_graph_resolves_lazy_and_relative_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from pkg.a import thing\n")
    (package / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from ..a import f\nimport pkg.sub\nimport os\n")
    assert import_graph(package) == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub.b"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.a", "pkg.sub"},
    }


def test_package_import_graph_has_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
