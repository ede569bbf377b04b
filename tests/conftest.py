"""Test-wide settings: never reach the network, keep the 2-core CI machine responsive."""

from __future__ import annotations

import os

import pytest

# Tests build tiny models from configs and never download weights or data sets.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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


@pytest.fixture(scope="session")
def tiny_fit_run(tmp_path_factory) -> dict:
    """One epoch of ``add-lightning fit`` of :func:`tiny_runs.tiny_run_config` on synthetic data
    (3 classes x 4 clips of 0.5 s, 2 folds; fold 2 trains), shared by the test modules that
    test, classify, export or resume a trained checkpoint: read-only (copy before changing).

    Returns ``config``, ``root`` (the data), ``run``, ``checkpoint`` (``run``'s ``last.ckpt``)
    and ``clip``, a 0.5-s noise file at 16 kHz that no split holds.
    """
    import numpy as np
    import soundfile
    from tiny_runs import synthetic_dataset, tiny_run_config

    from add_lightning.cli import main

    folder = tmp_path_factory.mktemp("tiny_fit_run")
    config = folder / "config.yaml"
    config.write_text(tiny_run_config(synthetic_dataset(folder / "synthetic"), folder / "cache"))
    run = folder / "run"
    assert main(["fit", "--config", str(config), "--trainer.default_root_dir", str(run)]) == 0
    clip = folder / "clip.wav"
    rng = np.random.default_rng(0)
    soundfile.write(clip, (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
    return {
        "config": config,
        "root": folder / "synthetic",
        "run": run,
        "checkpoint": run / "checkpoints" / "last.ckpt",
        "clip": clip,
    }
