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
