"""Start-up time and memory of the console script's commands.

Each command runs in a fresh process (``add-lightning`` of this interpreter's environment),
``--repeat`` times; printed: the median wall time and the median peak resident memory of the
child (``getrusage``). Commands that need no model must not load torch, Lightning or
transformers.

    python benchmarks/bench_startup.py --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("add-lightning")

COMMANDS = (
    ("add-lightning --help", ["--help"]),
    ("add-lightning compare --help", ["compare", "--help"]),
    ("add-lightning fit --help", ["fit", "--help"]),
)


def measure(arguments: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one run of ``add-lightning ARGUMENTS``."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(SCRIPT), *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"add-lightning {' '.join(arguments)} failed")
    return seconds, usage.ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for name, arguments in COMMANDS:
        runs = [measure(arguments) for _ in range(args.repeat)]
        seconds = statistics.median(run[0] for run in runs)
        memory = statistics.median(run[1] for run in runs)
        print(f"{name:<32} {seconds:6.2f} s  {memory:7.0f} MiB")


if __name__ == "__main__":
    main()
