"""What a run prints: one line per epoch for logs that are not a terminal, and less noise.

A progress bar redraws one line in place; written to a file (``add-lightning fit ... > log``,
SLURM's output files) only its last state survives, with no time per epoch.
:class:`EpochSummary` prints one line at the end of every epoch instead: epoch, seconds and
the epoch's logged metrics.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Any, TextIO

from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["EpochSummary", "log_to_console", "quiet_lightning"]


class EpochSummary(Callback):
    """Prints ``epoch 3/20  4.1 s  train/loss 1.234  val/acc 0.912 ...`` after every epoch.

    Printed on the global-zero process at the end of each training epoch, after its
    validation; the time covers both. ``validate`` and ``test`` print their table as usual.

    Args:
        metrics: The logged metrics to show, when logged (epoch values).
        stream: Where to print; None means ``sys.stderr`` at the time of printing.
        digits: Significant digits of the metrics.
    """

    def __init__(
        self,
        metrics: tuple[str, ...] = (
            "train/loss",
            "train/acc",
            "val/loss",
            "val/acc",
            "val/f1",
            "train/lr",
        ),
        stream: TextIO | None = None,
        digits: int = 4,
    ) -> None:
        self.metrics = tuple(metrics)
        self.stream = stream
        self.digits = digits
        self._started = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        seconds = time.perf_counter() - self._started
        logged = trainer.callback_metrics
        values = "".join(
            f"  {key} {float(logged[key]):.{self.digits}g}" for key in self.metrics if key in logged
        )
        total = "" if trainer.max_epochs in (None, -1) else f"/{trainer.max_epochs}"
        stream = self.stream if self.stream is not None else sys.stderr
        stream.write(f"epoch {trainer.current_epoch + 1}{total}  {seconds:.1f} s{values}\n")
        stream.flush()


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip:")


_TIP_FILTER = _DropTips()


def quiet_lightning() -> None:
    """Silences two messages of every command that tell the user nothing about the run.

    Lightning's advertisement for its cloud logger ("💡 Tip: ... litlogger") and torch's
    deprecation warning about ``LeafSpec``, raised inside Lightning's own code (nothing a user
    of this package can change). Idempotent.
    """
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class _RankZero(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        return getattr(rank_zero_only, "rank", 0) == 0


def log_to_console(level: int = logging.INFO) -> None:
    """Shows this package's log records (clip counts, caches, subsets) on stderr, rank 0 only.

    For the console script: a library leaves logging to the application. Nothing is added
    when the ``add_lightning`` logger or the root logger already has a handler.
    """
    logger = logging.getLogger("add_lightning")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RankZero())
    logger.addHandler(handler)
    logger.setLevel(level)
