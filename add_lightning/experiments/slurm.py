"""What the SLURM launcher needs beyond submitit: a unit's resources, its queue, its logging.

- :func:`unit_devices` and :func:`slurm_resources`: the GPUs, tasks and nodes of a unit's job
  follow its trainer config. Under SLURM, Lightning starts no processes of its own
  (``SLURMEnvironment``): it expects one task per device (``--ntasks-per-node`` = ``devices``)
  and waits for all of them, so a job with fewer tasks than devices would hang; such a
  mismatch is refused before anything is submitted.
- :class:`SlurmQueue`: whether a job is still queued or running, from ``squeue``. submitit asks
  ``sacct``, which answers nothing on a cluster without an accounting database: its status of
  a job that ended without a result stays unknown, and every poll logs a warning.
- :func:`log_submitit_once`: submitit's logger prints with handlers of its own and passes each
  record on to the root logger as well.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from add_lightning.experiments.config import ExperimentConfigError

__all__ = [
    "RESOURCE_PARAMETERS",
    "SlurmQueue",
    "UnitDevices",
    "log_submitit_once",
    "slurm_resources",
    "unit_devices",
]

log = logging.getLogger(__name__)

# submitit parameters that say how many GPUs, tasks and nodes a job has: generic and
# SLURM-specific names (the specific one wins in submitit).
RESOURCE_PARAMETERS = {
    "gpus_per_node": ("gpus_per_node", "slurm_gpus_per_node"),
    "tasks_per_node": ("tasks_per_node", "slurm_ntasks_per_node"),
    "nodes": ("nodes", "slurm_nodes"),
}


@dataclass(frozen=True)
class UnitDevices:
    """The processes a unit's ``Trainer`` runs.

    Attributes:
        gpu: Whether it trains on GPUs (``accelerator`` other than ``cpu``; ``auto`` counts as
            GPU, what it picks on a GPU node).
        devices: Devices (processes) per node; None: all the GPUs the node gives the job
            (``devices: -1`` or ``auto`` on GPUs).
        num_nodes: ``trainer.num_nodes``.
    """

    gpu: bool
    devices: int | None
    num_nodes: int


def _count_devices(value: Any, gpu: bool) -> int | None:
    """Lightning's ``devices`` as a count: ``2``, ``"2"``, ``[0, 1]`` and ``"0,1"`` are 2."""
    if isinstance(value, (list, tuple)):
        return len(value)
    if isinstance(value, str):
        value = value.strip()
        if "," in value:
            return len([item for item in value.split(",") if item.strip()])
        value = int(value) if value.lstrip("-").isdigit() else None  # "auto"
    if value is None or value == -1:
        return None if gpu else 1  # Lightning's CPU "auto" is one process
    return int(value)


def unit_devices(config: Mapping[str, Any]) -> UnitDevices:
    """The devices of an experiment config's trainer, with Lightning's defaults (``auto``)."""
    trainer = config.get("trainer") or {}
    accelerator = trainer.get("accelerator") or "auto"
    if isinstance(accelerator, Mapping):  # an Accelerator object: class_path + init_args
        accelerator = accelerator.get("class_path", "")
    gpu = "cpu" not in str(accelerator).lower()
    return UnitDevices(
        gpu, _count_devices(trainer.get("devices"), gpu), int(trainer.get("num_nodes") or 1)
    )


def _given(parameters: Mapping[str, Any], name: str) -> int | None:
    generic, specific = RESOURCE_PARAMETERS[name]
    value = parameters.get(specific, parameters.get(generic))
    return None if value is None else int(value)


def slurm_resources(
    devices: UnitDevices, parameters: Mapping[str, Any], gpus_per_unit: int | None = None
) -> dict[str, int | None]:
    """The ``gpus_per_node``, ``tasks_per_node`` and ``nodes`` of a unit's job.

    Each follows the trainer config unless given: ``gpus_per_unit`` (``--gpus-per-unit``), or
    the same names in ``parameters`` (``--slurm-config``). A GPU run gets a GPU per device
    (one when ``devices`` takes all of a node's), a CPU run none; every run gets a task per
    device (process), on ``num_nodes`` nodes.

    Returns:
        submitit parameters; ``gpus_per_node`` is None (no ``--gpus-per-node``) for a CPU run,
        which a cluster without GPUs would refuse.

    Raises:
        ExperimentConfigError: If the given values disagree with the trainer config in a way
            that would make the unit hang or fail once it runs: tasks per node other than its
            devices, nodes other than ``num_nodes``, fewer GPUs than devices.
    """
    gpus = gpus_per_unit if gpus_per_unit is not None else _given(parameters, "gpus_per_node")
    if gpus is not None and gpus < 0:
        raise ExperimentConfigError(
            f"Expected argument `--gpus-per-unit` to be 0 or more, got {gpus}"
        )
    per_node = devices.devices
    if devices.gpu:
        if gpus is None:
            gpus = per_node or 1
        per_node = per_node or gpus
        if gpus < per_node:
            raise ExperimentConfigError(
                f"Expected at least {per_node} GPU(s) per unit for trainer.devices {per_node}, "
                f"got --gpus-per-unit {gpus}: set --trainer.devices {gpus}, or give more GPUs"
            )
    else:
        per_node = per_node or 1
    tasks = _given(parameters, "tasks_per_node")
    if tasks is not None and tasks != per_node:
        raise ExperimentConfigError(
            f"Expected tasks_per_node {per_node} (one SLURM task per device of trainer.devices; "
            f"Lightning waits for them all), got {tasks} from --slurm-config"
        )
    nodes = _given(parameters, "nodes")
    if nodes is not None and nodes != devices.num_nodes:
        raise ExperimentConfigError(
            f"Expected nodes {devices.num_nodes} (trainer.num_nodes), got {nodes} from "
            "--slurm-config: set --trainer.num_nodes to match"
        )
    return {"gpus_per_node": gpus or None, "tasks_per_node": per_node, "nodes": devices.num_nodes}


# squeue's states of a job that will not run again. Not PREEMPTED or NODE_FAIL: SLURM may
# requeue such a job (it is then PENDING again); one it does not requeue counts as ended when
# SLURM forgets it.
_ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "OUT_OF_MEMORY", "TIMEOUT"}


class SlurmQueue:
    """The jobs of this user that SLURM still runs or will run, from ``squeue``.

    One ``squeue`` call every ``interval_s`` at most answers for all jobs. A job that is no
    longer listed (SLURM forgets ended jobs after ``MinJobAge``) or is listed as ended has
    ended. While ``squeue`` fails, every job counts as running, and the failure is logged once.

    Args:
        interval_s: Seconds between two ``squeue`` calls.
    """

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self._states: dict[str, str] | None = None
        self._read_at = float("-inf")
        self._failing = False

    def _read(self) -> None:
        command = ["squeue", "--noheader", "--array", f"--user={os.getuid()}", "--format=%i %T"]
        try:
            output = subprocess.run(
                command, capture_output=True, text=True, check=True, timeout=60
            ).stdout
        except (OSError, subprocess.SubprocessError) as error:
            if not self._failing:
                stderr = getattr(error, "stderr", None) or ""
                log.warning(
                    "squeue failed (%s): counting the units' jobs as running until it answers",
                    stderr.strip() or error,
                )
            self._failing = True
            self._states = None
            return
        if self._failing:
            log.info("squeue answers again")
        self._failing = False
        self._states = {
            parts[0]: parts[1] for parts in map(str.split, output.splitlines()) if len(parts) == 2
        }

    def expire(self) -> None:
        """Reads ``squeue`` afresh at the next question: jobs were submitted since the last."""
        self._read_at = float("-inf")

    def state(self, job_id: str) -> str | None:
        """The job's squeue state (``PENDING``, ``RUNNING``, ...); None when not listed."""
        if time.monotonic() - self._read_at >= self.interval_s:
            self._read_at = time.monotonic()
            self._read()
        if self._states is None:
            return "UNKNOWN"
        return self._states.get(job_id)

    def ended(self, job_id: str) -> bool:
        """Whether the job has ended (False while ``squeue`` fails)."""
        state = self.state(job_id)
        return state is None or state in _ENDED


def log_submitit_once(names: Iterable[str] = ("submitit_out", "submitit_err")) -> None:
    """Leaves the printing of submitit's log records to the root logger's handlers.

    submitit configures its logger with a stdout and a stderr handler of its own (both print a
    warning) and lets records propagate to the root logger, whose handler prints them a third
    time. Removing its handlers prints each record once, as the console configures it (and,
    without a root handler, warnings still reach stderr through Python's last resort).
    Delete when submitit stops configuring handlers (``SUBMITIT_LOG_LEVEL=NOCONFIG`` works
    only before submitit is imported).
    """
    logger = logging.getLogger("submitit")
    for handler in list(logger.handlers):
        if handler.get_name() in names:
            logger.removeHandler(handler)
