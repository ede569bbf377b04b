"""The console script in a subprocess, for tests of what a user runs (DDP runs above all).

``run_console(args)`` runs ``python -m add_lightning.cli ARGS`` in its own process group, with
this folder and the repository on ``PYTHONPATH`` (test callbacks are importable by class path)
and ``HF_HUB_OFFLINE=1``. A run that outlives its time limit is not merely killed: every
process of the group (the DDP ranks and their DataLoader workers) is sent SIGABRT, which
Python's faulthandler (``PYTHONFAULTHANDLER=1``, inherited by the ranks Lightning starts)
answers by printing the traceback of each thread,
so the failure message says where each process was waiting.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

__all__ = ["console_env", "faulthandler_stacks", "run_console"]

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def console_env(**extra: str) -> dict[str, str]:
    """The environment of a console-script subprocess (see the module doc)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"
    env.update(extra)
    return env


def faulthandler_stacks(text: str, limit: int = 20000) -> str:
    """The stacks in faulthandler's output ``text``, without its list of loaded extension
    modules (noise in a report), cut to its last ``limit`` characters."""
    lines = [
        line
        for line in text.splitlines()
        if "Extension modules:" not in line and not re.search(r"\(total: \d+\)$", line)
    ]
    return "\n".join(lines)[-limit:]


def _run_once(command: list[str], env: dict[str, str], timeout: float):
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the ranks and workers with it
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGABRT)  # faulthandler prints every thread's stack
        except ProcessLookupError:
            pass
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            stdout, stderr = "", ""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        return subprocess.CompletedProcess(command, -signal.SIGABRT, stdout, stderr), True


def run_console(
    args: Sequence[str],
    timeout: float = 240,
    retries: int = 0,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Runs ``add-lightning ARGS`` and asserts that it exits with 0; the completed process.

    Args:
        args: The arguments after ``add-lightning`` (the subcommand first).
        timeout: Seconds before the run counts as hung.
        retries: How many times a hung run is started again. Each hang is reported with its
            stacks as a warning (in pytest's summary); a run that fails otherwise is never
            retried.
        env: The environment; ``console_env()`` when None.
    """
    command = [sys.executable, "-m", "add_lightning.cli", *args]
    env = console_env() if env is None else env
    for attempt in range(retries + 1):
        result, hung = _run_once(command, env, timeout)
        if not hung:
            break
        report = f"`add-lightning {' '.join(args)}` hung for {timeout} s; stacks:\n"
        report += faulthandler_stacks(result.stderr)
        if attempt < retries:
            warnings.warn(report, stacklevel=2)
        else:
            raise AssertionError(report)
    assert result.returncode == 0, result.stderr[-4000:]
    return result
