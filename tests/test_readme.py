"""The README's two set-up commands stay true: CI runs the test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)[:2]


def test_readme_starts_with_quickstart_and_test_commands():
    quickstart, tests = _setup_commands()
    assert "pip install -e ." in quickstart and "configs/quickstart.yaml" in quickstart
    assert (ROOT / "configs" / "quickstart.yaml").is_file()
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    _, tests = _setup_commands()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines
