"""The file names of an experiment folder (layout in ``add_lightning.experiments.runner``).

Standard library only, so that a module that needs a name imports nothing else with it.
"""

from __future__ import annotations

__all__ = [
    "EMBEDDINGS_FILENAME",
    "EXPERIMENT_FILENAME",
    "LOCK_FILENAME",
    "LOG_FILENAME",
    "METRICS_FILENAME",
    "SWEEP_FILENAME",
    "UNIT_BUSY_STATUS",
    "UNIT_FILENAME",
]

EXPERIMENT_FILENAME = "experiment.yaml"
SWEEP_FILENAME = "sweep.yaml"
UNIT_FILENAME = "unit.json"
LOG_FILENAME = "unit.log"
LOCK_FILENAME = ".lock"
METRICS_FILENAME = "test_metrics.json"
EMBEDDINGS_FILENAME = "test_embeddings.npz"

#: Exit status of a unit whose lock another worker holds: not a failure, the unit is busy
#: (EX_TEMPFAIL of sysexits.h). Here so that the launchers read it without importing torch.
UNIT_BUSY_STATUS = 75
