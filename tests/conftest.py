"""Test-wide settings: never reach the network, keep the 2-core CI machine responsive."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests build tiny models from configs and never download weights or data sets.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One CPU thread per process: the README's command runs one pytest worker per core (`-n auto`),
# and the subprocesses the tests start (cv units, DDP ranks) inherit it. torch's default (a
# thread per core in every process) oversubscribes the cores: the suite took 574 s instead of
# 502 s on 2 cores, and the own-data learning test 52 s instead of 12 s. Set before torch is
# imported, so it is torch's thread count too. The cv tests that compare parallel units with
# serial ones byte for byte rely on it: with OMP_NUM_THREADS set, `cv --max-parallel` keeps the
# serial run's threads instead of dividing the cores (dividing changes the rounding).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_sessionstart(session: pytest.Session) -> None:
    # torchaudio's compiled extension loads only with the torch build it was compiled against.
    # A mismatched pair would fail the collection of every module that imports the data or
    # model packages; stop once, with the cause, instead.
    import torch

    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError) as error:
        from importlib.metadata import version

        pytest.exit(
            f"torchaudio {version('torchaudio')} does not load with torch {torch.__version__} "
            f"({error}). Install the locked pair: pip install -c requirements.lock -e '.[dev]'",
            returncode=1,
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # ADD_LIGHTNING_TEST_ORDER=SEED runs every test, and the test files, in an order shuffled
    # by SEED (the same in every xdist worker, which must collect the same order): no test may
    # depend on another having run before it.
    seed = os.environ.get("ADD_LIGHTNING_TEST_ORDER")
    if seed:
        import random

        random.Random(int(seed)).shuffle(items)


@pytest.fixture(autouse=True)
def _seeded_global_random_state() -> None:
    # Draws a test does not seed itself (a model's initial weights, dropout, an unseeded
    # loader) start from the same state whatever ran before: test order cannot change inputs.
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)  # noqa: NPY002
    torch.manual_seed(0)


@contextlib.contextmanager
def _once_per_session(
    tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[tuple[Path, bool]]:
    """A folder that one process of the test session fills, shared by all (read-only after).

    Yields ``(folder, build)``: ``build`` is True for the one process that must fill
    ``folder``; the others wait for it on a lock and get False. Under pytest-xdist every worker
    runs a session fixture itself; the workers of one session share the parent of their
    temporary folders (pytest-xdist's documented way of running a fixture once).
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / name
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        done = root / f"{name}.done"
        build = not done.exists()
        if build:
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed in another worker
            folder.mkdir()
        yield folder, build
        if build:
            done.touch()


@pytest.fixture(scope="session")
def serial_cv(tmp_path_factory) -> dict:
    """``add-lightning cv`` of 2 folds x 2 seeds, units one after another, of the tiny CE + ADD
    config (2 epochs, deterministic) on synthetic data (3 classes x 4 clips of 0.5 s, 2 folds):
    the reference of the launcher tests (parallel, killed, submitit, SLURM). Run once per test
    session; read-only (copy before changing).

    Returns ``config`` (the YAML file) and ``output`` (the experiment folder).
    """
    from tiny_runs import tiny_cv_config

    from add_lightning.experiments import cli

    with _once_per_session(tmp_path_factory, "serial_cv") as (folder, build):
        config, output = folder / "tiny.yaml", folder / "uninterrupted"
        if build:
            config.write_text(tiny_cv_config(folder / "synthetic"))
            arguments = ["--folds", "1", "2", "--seeds", "0", "1", "--output", str(output)]
            assert cli.main(["cv", "--config", str(config), *arguments]) == 0
    return {"config": config, "output": output}


@pytest.fixture(scope="session")
def tiny_fit_run(tmp_path_factory) -> dict:
    """One epoch of ``add-lightning fit`` of :func:`tiny_runs.tiny_run_config` on synthetic data
    (3 classes x 4 clips of 0.5 s, 2 folds; fold 2 trains), shared by the test modules that
    test, classify, export or resume a trained checkpoint. Run once per test session;
    read-only (copy before changing).

    Returns ``config``, ``root`` (the data), ``run``, ``checkpoint`` (``run``'s ``last.ckpt``)
    and ``clip``, a 0.5-s noise file at 16 kHz that no split holds.
    """
    import numpy as np
    import soundfile
    from tiny_runs import synthetic_dataset, tiny_run_config

    from add_lightning.cli import main

    with _once_per_session(tmp_path_factory, "tiny_fit_run") as (folder, build):
        config, run, clip = folder / "config.yaml", folder / "run", folder / "clip.wav"
        if build:
            data = synthetic_dataset(folder / "synthetic")
            config.write_text(tiny_run_config(data, folder / "cache"))
            argv = ["fit", "--config", str(config), "--trainer.default_root_dir", str(run)]
            assert main(argv) == 0
            rng = np.random.default_rng(0)
            noise = (0.1 * rng.standard_normal(8000)).astype(np.float32)
            soundfile.write(clip, noise, 16000)
    return {
        "config": config,
        "root": folder / "synthetic",
        "run": run,
        "checkpoint": run / "checkpoints" / "last.ckpt",
        "clip": clip,
    }
