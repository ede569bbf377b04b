"""Atomic file writes for the experiment tools: :mod:`add_lightning.atomic`, re-exported."""

from add_lightning.atomic import atomic_path, write_json_atomic, write_text_atomic

__all__ = ["atomic_path", "write_json_atomic", "write_text_atomic"]
