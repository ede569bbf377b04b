"""The console script in a subprocess, for tests of what a user runs (DDP runs above all).

``run_console(args)`` runs ``python -m add_lightning.cli ARGS`` in its own process group, with
this folder and the repository on ``PYTHONPATH`` (test callbacks are importable by class path)
and ``HF_HUB_OFFLINE=1``. A run that outlives its time limit is not merely killed: every
process of the group (the DDP ranks and their DataLoader workers) is sent SIGABRT, which
Python's faulthandler (``PYTHONFAULTHANDLER=1``, inherited by the ranks Lightning starts)
answers by printing the traceback of each thread,
so the failure message says where each process was waiting. A hung run fails the test: it is
never started again, since a retry would hide a hang that users' multi-process runs meet too.

Reading a hang's report: rank 0 waits in ``_create_c10d_store`` until every rank has joined
its TCP store, for up to torch's 30-minute default, and nothing tells it that a rank it
started has died. So a rank 1 that died before joining (the one CI hang: its stderr ended at
``[rank: 1] Seed set to 0``, before rank 1's ``Initializing distributed``) shows as rank 0 in
``_create_c10d_store``: with faulthandler on, a rank killed by SIGSEGV/SIGABRT/SIGBUS leaves its
stack in the report, and one killed by SIGKILL (the kernel's out-of-memory killer) has none.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "console_env",
    "console_output",
    "console_status",
    "faulthandler_stacks",
    "heavy_modules_loaded_by",
    "run_console",
]

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


# Set by a launcher for the processes it starts; inherited by a run, they would pin its DDP
# rendezvous (every run on one port) or make Lightning take it for one rank of a larger job.
_RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")


def console_env(**extra: str) -> dict[str, str]:
    """The environment of a console-script subprocess (see the module doc)."""
    env = {key: value for key, value in os.environ.items() if key not in _RENDEZVOUS}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO)])
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
    args: Sequence[str], timeout: float = 480, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Runs ``add-lightning ARGS`` and asserts that it exits with 0; the completed process.

    Args:
        args: The arguments after ``add-lightning`` (the subcommand first).
        timeout: Seconds before the run counts as hung: it fails with every process's stacks.
            The default is 15 times a quiet 2-process fit, so that a loaded machine is slow,
            not hung.
        env: The environment; ``console_env()`` when None.
    """
    command = [sys.executable, "-m", "add_lightning.cli", *args]
    result, hung = _run_once(command, console_env() if env is None else env, timeout)
    if hung:
        raise AssertionError(
            f"`add-lightning {' '.join(args)}` hung for {timeout} s; stacks:\n"
            + faulthandler_stacks(result.stderr)
        )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def console_status(argv: Sequence[str]) -> int:
    """The exit status of ``add-lightning ARGV`` run in this process, as ``sys.exit`` turns
    the console script's result into one (argparse and jsonargparse usage errors and
    ``--help`` raise SystemExit)."""
    from add_lightning.cli import console_main

    try:
        return console_main(list(argv))
    except SystemExit as exit_:
        return 0 if exit_.code is None else exit_.code


def console_output(argv: Sequence[str]) -> subprocess.CompletedProcess:
    """``add-lightning ARGV`` run in this process: its exit status and what it wrote to
    ``sys.stdout`` and ``sys.stderr``, as a completed process (the same fields as a
    subprocess's, without the 8-s start-up of another interpreter importing Lightning).

    Log records are not in ``stderr``: under pytest the root logger has pytest's handlers,
    so the console's own handler is not added (``caplog`` has them).
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = console_status(argv)
    return subprocess.CompletedProcess(
        ["add-lightning", *argv], status, out.getvalue(), err.getvalue()
    )


def heavy_modules_loaded_by(code: str) -> list[str]:
    """Which of Lightning, torchmetrics and transformers a fresh interpreter has imported after
    running ``code`` (some imports, say), sorted."""
    probe = (
        f"{code}\nimport sys\nheavy = ('lightning', 'torchmetrics', 'transformers')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.strip().splitlines()[-1])
