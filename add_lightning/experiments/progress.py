"""Progress of a launcher that a person can follow: counts, per-unit elapsed time, log paths.

Every change of a unit's state is logged as one line that starts with the counts::

    [queued 2 · running 2 · finished 1 · failed 0] fold2_seed0: running (log RUN/unit.log)
    [queued 2 · running 1 · finished 2 · failed 0] fold1_seed0: finished in 41.3 s

and while units run, a line every ``interval_s`` lists each running unit with its elapsed time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["Progress"]

log = logging.getLogger(__name__)

_STATES = ("queued", "running", "finished", "failed")


class Progress:
    """Counts of units queued / running / finished / failed, logged on every change.

    Args:
        labels: The units, all queued at the start.
        interval_s: How often :meth:`heartbeat` lists the running units.
    """

    def __init__(self, labels: Iterable[str], interval_s: float = 60.0) -> None:
        self.state = dict.fromkeys(labels, "queued")
        self.started: dict[str, float] = {}
        self.logs: dict[str, Path | None] = {}
        self.interval_s = interval_s
        self._last_heartbeat = time.monotonic()

    def counts(self) -> dict[str, int]:
        """``{"queued": n, "running": n, "finished": n, "failed": n}``."""
        counts = dict.fromkeys(_STATES, 0)
        for state in self.state.values():
            counts[state] += 1
        return counts

    def _line(self, label: str, what: str) -> None:
        counts = " · ".join(f"{state} {count}" for state, count in self.counts().items())
        log.info("[%s] %s: %s", counts, label, what)

    def elapsed(self, label: str) -> float:
        """Seconds since ``label`` started running (0 if it has not)."""
        return time.monotonic() - self.started[label] if label in self.started else 0.0

    def running(self, label: str, log_path: Path | None, where: str = "") -> None:
        """``label`` started (``where``: e.g. its GPUs or job id)."""
        self.state[label] = "running"
        self.started[label] = time.monotonic()
        self.logs[label] = log_path
        self._line(label, f"running{where} (log {log_path})")

    def requeued(self, label: str, why: str) -> None:
        """``label`` goes back to the queue (another worker holds it)."""
        self.state[label] = "queued"
        self._line(label, why)

    def finished(self, label: str, note: str = "") -> None:
        self.state[label] = "finished"
        took = f" in {self.elapsed(label):.1f} s" if label in self.started else ""
        self._line(label, f"finished{took}{note}")

    def failed(self, label: str, why: str) -> None:
        self.state[label] = "failed"
        self._line(label, f"FAILED after {self.elapsed(label):.1f} s: {why}")

    def heartbeat(self) -> None:
        """Every ``interval_s``: one line with each running unit and its elapsed time."""
        now = time.monotonic()
        if now - self._last_heartbeat < self.interval_s:
            return
        self._last_heartbeat = now
        running = [label for label, state in self.state.items() if state == "running"]
        if running:
            units = ", ".join(f"{label} {self.elapsed(label):.0f} s" for label in running)
            self._line("running", units)
