"""Experiments: cross-validation × seeds runs, searches over their settings, the paper's tables
and its analysis figure.

Command line: ``add-lightning cv``, ``add-lightning search``, ``add-lightning compare``,
``add-lightning figures`` (see :mod:`add_lightning.experiments.cli`).
"""

from add_lightning.experiments.aggregate import Summary, UnitResult, aggregate, write_results
from add_lightning.experiments.compare import compare_table, describe_experiment
from add_lightning.experiments.config import compose_config, config_hash
from add_lightning.experiments.runner import Launch, Unit, run_cv, run_sweep
from add_lightning.experiments.search import run_search

__all__ = [
    "Launch",
    "Summary",
    "Unit",
    "UnitResult",
    "aggregate",
    "compare_table",
    "compose_config",
    "config_hash",
    "describe_experiment",
    "run_cv",
    "run_search",
    "run_sweep",
    "write_results",
]
