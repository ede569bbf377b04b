"""``add-lightning cv | search | compare | figures``: the experiment commands of the console script.

``add_lightning.cli.main`` hands these subcommands (first argument) to :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from add_lightning.atomic import write_text_atomic
from add_lightning.cli import ERROR_STATUS, USAGE_STATUS
from add_lightning.experiments.files import UNIT_BUSY_STATUS
from add_lightning.experiments.locks import LockBusyError

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the experiment subcommands."""
    parser = argparse.ArgumentParser(
        prog="add-lightning",
        allow_abbrev=False,
        description="Cross-validation × seeds experiments, tables and figures.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    cv = commands.add_parser(
        "cv",
        allow_abbrev=False,  # `--fold 1` is an unknown override, not an abbreviation of --folds
        help="fit + test + export embeddings for every (fold, seed); resumable",
        description=(
            "Runs fit, test and the test-embedding export for each (fold, seed) in a fresh "
            "process, in OUTPUT/fold{k}_seed{s}/. Rerunning skips finished units and resumes an "
            "interrupted one from its last checkpoint. Unknown arguments are passed to `fit` as "
            "overrides (e.g. --trainer.max_epochs 2). Writes OUTPUT/results.{csv,md}: per seed "
            "the mean over folds, then mean ± sample std (ddof=1) over seeds."
        ),
    )
    cv.add_argument(
        "--config", action="append", required=True, type=Path, help="config file (repeatable)"
    )
    cv.add_argument(
        "--folds", nargs="+", type=int, default=None, help="folds (omit for datasets without folds)"
    )
    cv.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)"
    )
    cv.add_argument("--output", required=True, type=Path, help="experiment directory")
    cv.add_argument(
        "--unseen-classes",
        nargs="+",
        default=None,
        metavar="N_OR_NAME",
        help="hold N classes (drawn with --unseen-seed), or the named ones, out of training and "
        "test retrieval and geometry on their clips of the test fold only",
    )
    cv.add_argument(
        "--unseen-seed", type=int, default=None, help="seed of the draw of --unseen-classes"
    )
    cv.add_argument(
        "--force",
        action="store_true",
        help="replace the config of an experiment directory made with another",
    )
    _add_launcher_arguments(cv)
    _add_sweep_arguments(cv)
    _add_search_parser(commands)

    compare = commands.add_parser(
        "compare",
        help="Table-2-like Markdown table of several experiments",
        description=(
            "Rows: losses; columns: dataset × backbone; cells: mean ± std over seeds; the best "
            "of each column in bold."
        ),
    )
    compare.add_argument(
        "directories",
        nargs="+",
        type=Path,
        help="experiment directories of `cv` (a sweep: all its experiments; a search: its "
        "complete trials, with validation metrics: --metric val/acc)",
    )
    compare.add_argument(
        "--metric",
        nargs="+",
        default=["test/acc"],
        help="metric(s) to compare, side by side (default: test/acc)",
    )
    compare.add_argument(
        "--lower-is-better",
        action="store_true",
        help="bold the lowest of every column (default: lowest for test/geometry/* and losses, "
        "highest for the others)",
    )
    compare.add_argument(
        "--output", type=Path, default=None, help="also write the table to this file"
    )
    compare.add_argument(
        "--baseline",
        default=None,
        metavar="ROW",
        help="also tabulate each row's difference to this row (a loss, e.g. CE) per column: "
        "paired over the (fold, seed) units both have, 95%% interval, Holm-adjusted p-values",
    )
    compare.add_argument(
        "--statistics",
        type=Path,
        default=None,
        metavar="CSV",
        help="with --baseline: write every number of the differences to this CSV file",
    )

    figures = commands.add_parser(
        "figures",
        help="class-pair heat maps and property statistics from exported test embeddings",
        description=(
            "Draws the paper's analysis figure (mean of d and its CV per class pair, one column "
            "per run) to OUTPUT, the bars of mu_p, sigma_p, mu_n, sigma_n next to those of "
            "precision@1, R-precision and MAP@R to OUTPUT_properties.png, and writes (and "
            "prints) the table of these numbers per run to OUTPUT_numbers.md."
        ),
    )
    figures.add_argument(
        "runs", nargs="+", type=Path, help="run directories or test_embeddings.npz files"
    )
    figures.add_argument(
        "--classes", type=int, default=10, help="draw the first N class ids (default 10)"
    )
    figures.add_argument(
        "--class-ids", nargs="+", type=int, default=None, help="draw these class ids instead"
    )
    figures.add_argument("--labels", nargs="+", default=None, help="column titles, one per run")
    figures.add_argument("--output", type=Path, required=True, help="PNG of the heat maps")
    figures.add_argument(
        "--properties-output", type=Path, default=None, help="PNG of the bar chart"
    )
    return parser


def _add_launcher_arguments(
    cv: argparse.ArgumentParser,
    parallel: str = "--max-parallel",
    parallel_help: str = "units at once (default 1: one after another); slurm: the array's "
    "parallelism",
) -> None:
    """Where the units of ``cv`` (or the workers of ``search``: ``parallel="--workers"``) run:
    this machine (in parallel) or SLURM through submitit."""
    group = cv.add_argument_group(
        "launcher",
        "Where the units run. Every launcher skips finished units, trains each unit under its "
        "own lock (several launchers may share an experiment) and resumes interrupted ones.",
    )
    group.add_argument(
        "--launcher",
        choices=("local", "slurm", "submitit-local"),
        default="local",
        help="local: subprocesses of this machine (default); slurm: a submitit job array; "
        "submitit-local: the same submitit jobs on this machine",
    )
    group.add_argument(
        parallel, dest="max_parallel", type=int, default=1, metavar="N", help=parallel_help
    )
    group.add_argument(
        "--gpus-per-unit",
        type=int,
        default=None,
        help="GPUs of each unit (CUDA_VISIBLE_DEVICES; slurm: --gpus-per-node, with one task "
        "per device of trainer.devices); without GPUs, parallel units divide the CPU threads "
        "(default: the trainer config's, trainer.devices on GPUs and none for accelerator: cpu)",
    )
    group.add_argument(
        "--keep-going",
        action="store_true",
        help="run the other units after one failed; failures are listed at the end",
    )
    group.add_argument(
        "--no-wait",
        action="store_true",
        help="slurm: submit and return; rerun the command (or `compare`) to aggregate",
    )
    slurm = cv.add_argument_group(
        "slurm", "Job parameters of --launcher slurm (the command line wins over --slurm-config)."
    )
    slurm.add_argument(
        "--slurm-config",
        type=Path,
        default=None,
        help="YAML mapping of submitit AutoExecutor parameters (slurm_partition, timeout_min, "
        "slurm_additional_parameters, slurm_setup, ...)",
    )
    slurm.add_argument("--slurm-partition", default=None, help="partition (-p)")
    slurm.add_argument(
        "--slurm-time", type=int, default=None, help="time limit per unit in minutes (24 h)"
    )
    slurm.add_argument("--cpus-per-unit", type=int, default=None, help="CPUs per unit's task")
    slurm.add_argument("--mem-gb", type=float, default=None, help="memory per unit in GB")
    slurm.add_argument(
        "--slurm-sbatch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra #SBATCH --KEY=VALUE line, e.g. account=myproject (repeatable)",
    )
    slurm.add_argument(
        "--slurm-setup",
        action="append",
        default=[],
        metavar="COMMAND",
        help="a shell command run before each unit, e.g. 'module load cuda' (repeatable)",
    )
    slurm.add_argument(
        "--max-requeues",
        type=int,
        default=3,
        help="requeues of a preempted or timed-out unit (resumed from its checkpoint)",
    )


def _add_sweep_arguments(cv: argparse.ArgumentParser) -> None:
    """Several experiments in one command: OUTPUT/<name>/ each."""
    group = cv.add_argument_group(
        "sweep",
        "Run several experiments, OUTPUT/<name>/ each with its own experiment.yaml, listed in "
        "OUTPUT/sweep.yaml (`add-lightning compare OUTPUT` tabulates them). Variants × grid.",
    )
    group.add_argument(
        "--grid",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=V1,V2",
        help="a cartesian grid over fit options (trainer.max_epochs=10,20) or config files "
        "(config=configs/loss/ce.yaml,configs/loss/add.yaml)",
    )
    group.add_argument(
        "--variants",
        type=Path,
        default=None,
        help="YAML mapping of variant name -> {config, overrides, folds, seeds}",
    )


def _add_search_parser(commands: Any) -> None:
    """``add-lightning search``: an Optuna study whose trials are cross-validated experiments."""
    search = commands.add_parser(
        "search",
        allow_abbrev=False,  # as cv: unknown arguments are overrides of fit
        help="an Optuna search over config values (the ADD weights, lr); trials are cv runs",
        description=(
            "Runs an Optuna study (TPE sampler, median pruner) whose trials set the values of "
            "the search space (--space) and train the cv units (folds x seeds) of the result, "
            "scored by a validation metric: where validation is the test fold, on an inner "
            "split (--val-fraction) instead. Workers share the study (SQLite in OUTPUT by "
            "default); rerunning resumes. At the end the best trial is written to "
            "OUTPUT/best.yaml, a config for cv and fit, and run by cv in OUTPUT/best: the test "
            "folds are evaluated once. Unknown arguments are passed to fit (e.g. "
            "--trainer.max_epochs 10). Needs the `search` extra."
        ),
    )
    search.add_argument(
        "--config", action="append", required=True, type=Path, help="config file (repeatable)"
    )
    search.add_argument(
        "--space",
        required=True,
        help="search-space YAML: parameters (config keys with ranges or choices) and trials "
        "to enqueue; a file, or a packaged one by name (search/add_weights)",
    )
    search.add_argument("--trials", type=int, required=True, help="trials to finish")
    search.add_argument("--folds", nargs="+", type=int, default=None, help="folds of every trial")
    search.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0],
        help="seeds of every trial (default: 0; each trial trains folds x seeds units)",
    )
    search.add_argument("--output", required=True, type=Path, help="search folder")
    search.add_argument(
        "--metric",
        default="val/acc",
        help="validation metric a trial is scored by, the mean over its units (default "
        "val/acc; losses and val/geometry/* are minimized, the others maximized)",
    )
    search.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="where validation is the test fold: the fraction of each fold's training clips "
        "the trials validate on instead (default 0.2)",
    )
    search.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")
    search.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="Optuna storage (a database URL, e.g. postgresql://host/db); default: "
        "sqlite:///OUTPUT/study.db",
    )
    search.add_argument("--study-name", default="search", help="the study's name in the storage")
    search.add_argument(
        "--pruner",
        choices=("median", "none"),
        default="median",
        help="median: stop a trial whose metric at an epoch is worse than the median of the "
        "finished trials' at that epoch (default); none: never",
    )
    search.add_argument(
        "--pruner-startup-trials",
        type=int,
        default=5,
        help="finished trials before the pruner prunes (default 5)",
    )
    search.add_argument(
        "--pruner-warmup-epochs",
        type=int,
        default=0,
        help="epochs of a trial's first unit that are never pruned (default 0)",
    )
    search.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep every trial's checkpoints (default: deleted when the trial ends)",
    )
    _add_launcher_arguments(
        search,
        "--workers",
        "trials at once: worker processes sharing the study (default 1); slurm: the job "
        "array's jobs",
    )


def _slurm_parameters(args: argparse.Namespace) -> dict:
    """submitit parameters from --slurm-config, then the command line's --slurm-* options."""
    import yaml

    from add_lightning.experiments.config import ExperimentConfigError

    parameters: dict = {}
    if args.slurm_config is not None:
        try:
            parameters = yaml.safe_load(args.slurm_config.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ExperimentConfigError(
                f"Expected a --slurm-config file, but {args.slurm_config} does not exist"
            ) from None
        if not isinstance(parameters, dict):
            raise ExperimentConfigError(
                f"Expected {args.slurm_config} to map submitit parameters to values, got "
                f"{type(parameters).__name__}"
            )
    given = {
        "slurm_partition": args.slurm_partition,
        "timeout_min": args.slurm_time,
        "cpus_per_task": args.cpus_per_unit,
        "mem_gb": args.mem_gb,
    }
    parameters.update({key: value for key, value in given.items() if value is not None})
    extra = dict(parameters.get("slurm_additional_parameters") or {})
    for item in args.slurm_sbatch:
        key, sep, value = item.partition("=")
        if not sep or not key.strip("- "):
            raise ExperimentConfigError(
                f"Expected argument `--slurm-sbatch` as KEY=VALUE (e.g. account=proj), got {item!r}"
            )
        extra[key.strip().lstrip("-").replace("-", "_")] = value
    if extra:
        parameters["slurm_additional_parameters"] = extra
    if args.slurm_setup:
        parameters["slurm_setup"] = [*(parameters.get("slurm_setup") or []), *args.slurm_setup]
    return parameters


def _launch(args: argparse.Namespace):
    from add_lightning.experiments.runner import Launch

    return Launch(
        launcher=args.launcher,
        max_parallel=args.max_parallel,
        gpus_per_unit=args.gpus_per_unit,
        keep_going=args.keep_going,
        wait=not args.no_wait,
        slurm=_slurm_parameters(args),
        max_requeues=args.max_requeues,
    )


def _cv(args: argparse.Namespace, overrides: list[str]) -> int:
    from add_lightning.experiments.aggregate import results_markdown
    from add_lightning.experiments.runner import run_cv, run_sweep
    from add_lightning.experiments.sweep import expand_sweep, parse_grid, read_variants

    overrides = _unseen_overrides(args) + overrides
    launch = _launch(args)
    variants = read_variants(args.variants) if args.variants is not None else []
    members = expand_sweep(variants, parse_grid(args.grid))
    if not members:
        summary = run_cv(
            args.config, args.seeds, args.output, args.folds, overrides, args.force, launch
        )
        if summary is not None:
            sys.stdout.write(results_markdown(summary, title=f"Results: {args.output}"))
        return 0
    summaries = run_sweep(
        args.config, args.seeds, args.output, members, args.folds, overrides, args.force, launch
    )
    for name, summary in summaries.items():
        sys.stdout.write(results_markdown(summary, title=f"Results: {args.output / name}") + "\n")
    return 0


def _search(args: argparse.Namespace, overrides: list[str]) -> int:
    from add_lightning.experiments.search_study import import_optuna

    import_optuna()  # before anything else: the one-line message when the extra is missing
    from add_lightning.experiments.aggregate import results_markdown
    from add_lightning.experiments.search import SearchOptions, run_search

    options = SearchOptions(
        trials=args.trials,
        metric=args.metric,
        val_fraction=args.val_fraction,
        seed=args.seed,
        storage=args.storage,
        study_name=args.study_name,
        pruner=args.pruner,
        pruner_startup_trials=args.pruner_startup_trials,
        pruner_warmup_epochs=args.pruner_warmup_epochs,
        keep_checkpoints=args.keep_checkpoints,
    )
    result = run_search(
        args.config,
        _space_file(args.space),
        args.output,
        options,
        args.folds,
        args.seeds,
        overrides,
        _launch(args),
    )
    if result is not None:
        best = args.output / "best"
        sys.stdout.write(
            f"{result.markdown}\nBest: trial {result.best['number']}, written to "
            f"{result.best_config} (a config for cv and fit).\n\n"
            + results_markdown(result.test, title=f"Test of the best trial: {best}")
        )
    return 0


def _space_file(value: str) -> str:
    """The search-space file of ``--space``: a file, or a packaged one by name."""
    from add_lightning.experiments.config import ExperimentConfigError
    from add_lightning.packaged_configs import packaged_config_names, resolve_config

    if Path(value).is_file():
        return value
    try:
        return resolve_config(value)
    except FileNotFoundError:
        packaged = [name for name in packaged_config_names() if name.startswith("search/")]
        raise ExperimentConfigError(
            f"Expected argument `--space` to be a search-space file or a packaged one "
            f"({', '.join(packaged)}), but {value!r} is neither"
        ) from None


def _unseen_overrides(args: argparse.Namespace) -> list[str]:
    """The data-module overrides of ``--unseen-classes`` and ``--unseen-seed``."""
    overrides = []
    if args.unseen_classes is not None:
        values = args.unseen_classes
        if len(values) == 1 and values[0].isdigit():
            overrides += ["--data.init_args.unseen_classes", values[0]]
        else:
            overrides += ["--data.init_args.unseen_classes", json.dumps(values)]
    if args.unseen_seed is not None:
        overrides += ["--data.init_args.unseen_seed", str(args.unseen_seed)]
    return overrides


def _compare(args: argparse.Namespace) -> int:
    from add_lightning.experiments.compare import (
        baseline_comparisons,
        compare_table,
        comparisons_csv,
    )

    if args.statistics is not None and args.baseline is None:
        raise ValueError("Expected --baseline ROW with --statistics, got no --baseline")
    table = compare_table(
        args.directories,
        args.metric,
        higher_is_better=False if args.lower_is_better else None,
        baseline=args.baseline,
    )
    if args.output is not None:
        write_text_atomic(args.output, table)
    if args.statistics is not None:
        comparisons = baseline_comparisons(args.directories, args.metric, args.baseline)
        write_text_atomic(args.statistics, comparisons_csv(comparisons))
    sys.stdout.write(table)
    return 0


def _figures(args: argparse.Namespace) -> int:
    from add_lightning.experiments.figures import make_figures

    heatmaps, properties = make_figures(
        args.runs, args.output, args.classes, args.class_ids, args.labels, args.properties_output
    )
    numbers = heatmaps.with_name(f"{heatmaps.stem}_numbers.md")
    sys.stdout.write(f"{heatmaps}\n{properties}\n{numbers}\n\n{numbers.read_text()}")
    return 0


def _error_status(error: Exception) -> int:
    """The exit status of an error of ``cv``, ``compare`` or ``figures`` (README, "Exit
    statuses"): 2 for a config or override that does not parse, as ``fit`` exits for it;
    :data:`UNIT_BUSY_STATUS` when another ``cv`` holds the experiment (try again later);
    otherwise 1 (a bad config value, directory or file, or a unit that failed)."""
    if isinstance(error.__cause__, SystemExit):  # jsonargparse refused the config
        return USAGE_STATUS
    if isinstance(error.__cause__, LockBusyError):
        return UNIT_BUSY_STATUS
    return ERROR_STATUS


def main(argv: list[str] | None = None) -> int:
    """Runs ``cv``, ``search``, ``compare`` or ``figures``; returns the exit status.

    Errors a user can cause (bad config, wrong directory, missing files, failed units) are
    reported in one line on stderr, without a traceback; see :func:`_error_status` for the
    exit status.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if unknown and args.command not in ("cv", "search"):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "cv":
            return _cv(args, unknown)
        if args.command == "search":
            return _search(args, unknown)
        if args.command == "compare":
            return _compare(args)
        return _figures(args)
    except (ValueError, OSError, RuntimeError) as error:
        sys.stderr.write(f"add-lightning {args.command}: error: {error}\n")
        return _error_status(error)


if __name__ == "__main__":
    sys.exit(main())
