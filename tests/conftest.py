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
