"""The environment the tests run in is the locked one, and every module of the package imports."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import add_lightning

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(add_lightning.__path__, prefix="add_lightning.")
)


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports(module):
    importlib.import_module(module)


def _locked() -> dict[str, list[tuple[str, Requirement]]]:
    """requirements.lock as {name: [(pinned version, requirement with its marker)]}."""
    pins: dict[str, list[tuple[str, Requirement]]] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"requirements.lock: {line!r} is not an exact pin"
        pins.setdefault(canonicalize_name(requirement.name), []).append(
            (specifier.version, requirement)
        )
    return pins


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def test_lock_pins_every_dependency_within_the_pyproject_range():
    locked = _locked()
    for requirement in _pyproject_requirements():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is in pyproject.toml but not in the lock"
        for pinned, _ in locked[name]:
            assert requirement.specifier.contains(pinned, prereleases=True), (
                f"requirements.lock pins {name}=={pinned}, outside pyproject's {requirement}"
            )


@pytest.mark.parametrize("name", ["torch", "torchaudio", "lightning", "transformers"])
def test_installed_versions_are_the_locked_ones(name):
    # pip reports torch's local build tag (2.14.1+cu130); the lock pins the public version.
    installed = version(name).split("+")[0]
    pins = [
        pinned for pinned, req in _locked()[name] if req.marker is None or req.marker.evaluate()
    ]
    assert pins == [installed], f"{name} {installed} is installed, the lock pins {pins}"
