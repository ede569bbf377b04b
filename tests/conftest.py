"""Test-wide settings: never reach the network, keep the 2-core CI machine responsive."""

from __future__ import annotations

import os

# Tests build tiny models from configs and never download weights or data sets.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
