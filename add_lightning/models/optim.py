"""Learning-rate schedules of the ADD paper's public configs, as epoch-based LR schedulers.

Every schedule is a closed-form factor of the epoch index ``e`` (0-based, as Lightning counts
epochs) that multiplies each parameter group's initial learning rate. Schedulers are stepped
once per epoch (``interval="epoch"``), so the learning rate of epoch ``e`` is
``base_lr * factor(e)``. All start with a linear warm-up:

    factor(e) = s + (1 - s) * e / W        for e < W     (s = warmup_start_factor)

The paper's "linear from 1e-5" is read as a start *factor* of 1e-5 (a warm-up from an absolute
1e-5 would decrease towards the AST learning rate 6.7e-6, which is not a warm-up).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from add_lightning.checks import check_int, check_range

__all__ = [
    "WarmupConstantLR",
    "WarmupCosineLR",
    "WarmupExponentialLR",
    "configure_optimization",
    "describe_optimizer",
    "fit_schedule_to_run",
]

log = logging.getLogger(__name__)

# No default optimizer: the right one depends on what is trained (the paper's Adam at 6.7e-6
# fine-tunes a pretrained AST and leaves a randomly initialised one at chance), so a model
# without one is refused with the two settings the shipped recipes use.
_NO_OPTIMIZER = (
    "AudioClassifier has no `optimizer`; set `model.init_args.optimizer`, e.g. "
    "{class_path: torch.optim.AdamW, init_args: {lr: 2.0e-3, weight_decay: 0.05}} to train a "
    "randomly initialised backbone (configs/experiments/ast_tiny_cpu.yaml) or "
    "{class_path: torch.optim.Adam, init_args: {lr: 6.7e-6, betas: [0.95, 0.999], "
    "weight_decay: 5.0e-6}} to fine-tune a pretrained AST (configs/experiments/ast_esc50.yaml)"
)


class _WarmupLR(LRScheduler):
    """Linear warm-up over ``warmup_epochs`` epochs followed by :meth:`decay_factor`."""

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_epochs: int = 5,
        warmup_start_factor: float = 1e-5,
        last_epoch: int = -1,
    ) -> None:
        check_int("warmup_epochs", warmup_epochs, minimum=0)
        check_range("warmup_start_factor", warmup_start_factor, 0, 1, include_low=False)
        self.warmup_epochs = warmup_epochs
        self.warmup_start_factor = warmup_start_factor
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        """Multiplier of the initial learning rate at (0-based) ``epoch``."""
        if epoch < self.warmup_epochs:
            start = self.warmup_start_factor
            return start + (1.0 - start) * epoch / self.warmup_epochs
        return self.decay_factor(epoch - self.warmup_epochs)

    def decay_factor(self, epochs_after_warmup: int) -> float:
        """Multiplier after the warm-up; ``epochs_after_warmup`` is 0 at the first such epoch."""
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        factor = self.factor(max(self.last_epoch, 0))
        return [base_lr * factor for base_lr in self.base_lrs]


class WarmupExponentialLR(_WarmupLR):
    """AST schedule: warm-up, then the learning rate times ``gamma`` after every epoch.

    ``factor(e) = gamma ** (e - W)`` for ``e >= W`` (authors' AST configs: W=5, gamma=0.85).

    Args:
        optimizer: Wrapped optimizer.
        warmup_epochs: Number of warm-up epochs ``W``.
        warmup_start_factor: Factor of the first warm-up epoch ``s``.
        gamma: Multiplicative decay per epoch after the warm-up.
        last_epoch: Index of the last epoch when resuming (PyTorch convention).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_epochs: int = 5,
        warmup_start_factor: float = 1e-5,
        gamma: float = 0.85,
        last_epoch: int = -1,
    ) -> None:
        check_range("gamma", gamma, 0, 1, include_low=False)
        self.gamma = gamma
        super().__init__(optimizer, warmup_epochs, warmup_start_factor, last_epoch)

    def decay_factor(self, epochs_after_warmup: int) -> float:
        return self.gamma**epochs_after_warmup


class WarmupCosineLR(_WarmupLR):
    """BEATs ESC-50/ER schedule: warm-up, then half a cosine down to ``final_factor``.

    ``factor(e) = f + (1 - f) * (1 + cos(pi * (e - W) / (max_epochs - W))) / 2`` for
    ``W <= e <= max_epochs`` and ``f`` afterwards (authors' BEATs configs: f = 0.001).

    The length is the run's: with ``max_epochs=None`` (the default) ``AudioClassifier`` sets it
    to ``trainer.max_epochs`` when it builds the scheduler (:meth:`set_max_epochs`), so
    ``--trainer.max_epochs N`` alone changes both. A run of at most ``W`` epochs never leaves
    the warm-up (a warning says so).

    Args:
        optimizer: Wrapped optimizer.
        max_epochs: Epoch at which the cosine reaches ``final_factor``; None (recommended)
            takes the trainer's ``max_epochs``. An explicit value must exceed ``warmup_epochs``.
        warmup_epochs: Number of warm-up epochs ``W``.
        warmup_start_factor: Factor of the first warm-up epoch ``s``.
        final_factor: Factor at the end of the cosine ``f``.
        last_epoch: Index of the last epoch when resuming (PyTorch convention).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_epochs: int | None = None,
        warmup_epochs: int = 5,
        warmup_start_factor: float = 1e-5,
        final_factor: float = 1e-3,
        last_epoch: int = -1,
    ) -> None:
        if max_epochs is not None and (
            isinstance(max_epochs, bool)
            or not isinstance(max_epochs, int)
            or max_epochs <= warmup_epochs
        ):
            raise ValueError(
                "Expected argument `max_epochs` to be None (the trainer's max_epochs) or an int "
                f"larger than `warmup_epochs` ({warmup_epochs}) but got {max_epochs!r}"
            )
        check_range("final_factor", final_factor, 0, 1)
        self.max_epochs = max_epochs
        self.final_factor = final_factor
        super().__init__(optimizer, warmup_epochs, warmup_start_factor, last_epoch)

    def set_max_epochs(self, max_epochs: int) -> None:
        """Sets the length of a schedule built with ``max_epochs=None`` (the trainer's).

        Raises:
            ValueError: If ``max_epochs`` is not a positive int (e.g. an unbounded run).
        """
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(
                "WarmupCosineLR takes its length from `trainer.max_epochs`, which must be a "
                f"positive int, but it is {max_epochs!r}; set `trainer.max_epochs` or the "
                "scheduler's `max_epochs`"
            )
        if max_epochs <= self.warmup_epochs:
            warnings.warn(
                f"WarmupCosineLR: the run has {max_epochs} epochs, not more than its "
                f"{self.warmup_epochs} warm-up epochs, so the learning rate never leaves the "
                "warm-up",
                stacklevel=2,
            )
        self.max_epochs = max_epochs

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores a checkpoint's schedule, its length included.

        A run resumed with another ``trainer.max_epochs`` keeps the length it was trained with,
        so the epochs ahead follow the same cosine as those behind it (after its end the factor
        stays ``final_factor``) rather than jumping to another; a warning names both lengths.
        """
        run_epochs = self.max_epochs
        super().load_state_dict(state_dict)
        if run_epochs is not None and self.max_epochs not in (None, run_epochs):
            warnings.warn(
                f"WarmupCosineLR: the checkpoint's schedule is {self.max_epochs} epochs long "
                f"and this run has {run_epochs}; it keeps the checkpoint's length, so epochs "
                f"from {self.max_epochs} on run at its final factor {self.final_factor}",
                stacklevel=2,
            )

    def decay_factor(self, epochs_after_warmup: int) -> float:
        if epochs_after_warmup == 0:  # the cosine's start, whatever its length
            return 1.0
        if self.max_epochs is None:
            raise RuntimeError(
                "WarmupCosineLR(max_epochs=None) has no length: pass `max_epochs`, or let "
                "AudioClassifier set it from `trainer.max_epochs`"
            )
        span = max(self.max_epochs - self.warmup_epochs, 1)
        progress = min(epochs_after_warmup / span, 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_factor + (1.0 - self.final_factor) * cosine


class WarmupConstantLR(_WarmupLR):
    """BEATs Speech Commands schedule: warm-up, then the constant initial learning rate.

    Args:
        optimizer: Wrapped optimizer.
        warmup_epochs: Number of warm-up epochs ``W``.
        warmup_start_factor: Factor of the first warm-up epoch ``s``.
        last_epoch: Index of the last epoch when resuming (PyTorch convention).
    """

    def decay_factor(self, epochs_after_warmup: int) -> float:
        return 1.0


def describe_optimizer(optimizer: Optimizer) -> str:
    """The optimizer's class and the settings that decide training, as logged at its start.

    E.g. ``AdamW(lr=0.001, betas=(0.9, 0.999), weight_decay=0.05)``: the rate given to it (a
    warm-up then scales it per epoch), not the first epoch's.
    """
    settings = ("lr", "betas", "momentum", "weight_decay")
    given = ", ".join(
        f"{key}={optimizer.defaults[key]}" for key in settings if key in optimizer.defaults
    )
    return f"{type(optimizer).__name__}({given})"


def fit_schedule_to_run(scheduler: Any, run_epochs: int | None) -> None:
    """Gives a schedule with a length (``WarmupCosineLR``) the run's ``trainer.max_epochs``.

    ``max_epochs=None`` takes ``run_epochs``; an explicit value that differs from it is kept,
    with a warning (the schedule then ends before or after the run). Other schedules have no
    length and are left as they are.
    """
    if not isinstance(scheduler, WarmupCosineLR):
        return
    if scheduler.max_epochs is None:
        scheduler.set_max_epochs(run_epochs)
    elif scheduler.max_epochs != run_epochs:
        rank_zero_warn(
            f"The scheduler's max_epochs={scheduler.max_epochs} differs from "
            f"trainer.max_epochs={run_epochs}; leave the scheduler's unset to follow the "
            "trainer"
        )


def configure_optimization(
    optimizer: Callable[[Iterable[nn.Parameter]], Optimizer] | None,
    scheduler: Callable[[Optimizer], Any] | None,
    parameters: list[nn.Parameter],
    run_epochs: int | None,
) -> Any:
    """What ``configure_optimizers`` returns: the optimizer over ``parameters`` and, with a
    ``scheduler``, its epoch schedule (fitted to ``run_epochs``, the trainer's ``max_epochs``,
    unless None: no trainer), ``ReduceLROnPlateau`` monitoring ``val/loss``. Logs both.

    Raises:
        ValueError: If ``optimizer`` is None, naming the settings of the shipped recipes.
    """
    if optimizer is None:
        raise ValueError(_NO_OPTIMIZER)
    built = optimizer(parameters)
    schedule = None if scheduler is None else scheduler(built)
    log.info(
        "Optimizer %s over %d trainable parameters, schedule %s",
        describe_optimizer(built),
        sum(p.numel() for p in parameters),
        "none" if schedule is None else type(schedule).__name__,
    )
    if schedule is None:
        return built
    if run_epochs is not None:
        fit_schedule_to_run(schedule, run_epochs)
    config = {"scheduler": schedule, "interval": "epoch"}
    if isinstance(schedule, ReduceLROnPlateau):
        config["monitor"] = "val/loss"
    return {"optimizer": built, "lr_scheduler": config}
