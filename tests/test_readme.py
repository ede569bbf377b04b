"""The README's two set-up commands stay true: CI runs both verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)[:2]


def test_readme_starts_with_quickstart_and_test_commands():
    quickstart, tests = _setup_commands()
    assert "configs/quickstart.yaml" in quickstart and "pytest" in tests
    assert (ROOT / "configs" / "quickstart.yaml").is_file()
    for command in (quickstart, tests):  # both install from the lock
        assert "pip install" in command and "-c requirements.lock -e " in command
    assert (ROOT / "requirements.lock").is_file()


def test_ci_runs_both_readme_commands_verbatim():
    quickstart, tests = _setup_commands()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines
    assert quickstart in ci_lines


def test_readme_commands_use_the_virtualenv():
    # the README and docs/ never activate .venv: a bare `add-lightning` is "command not found"
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    blocks = re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)
    bare = [
        line
        for block in blocks
        for line in block.splitlines()
        if re.match(r"\s*(add-lightning|tensorboard|jupyter|pytest)\s", line)
    ]
    assert bare == []
    assert sum(".venv/bin/add-lightning" in block for block in blocks) >= 10
