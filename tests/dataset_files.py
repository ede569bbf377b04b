"""Metadata files of the fake datasets that several test modules write."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["ESC50_COLUMNS", "write_esc50_meta", "write_manifest"]

#: The columns of ESC-50's meta/esc50.csv, in its order.
ESC50_COLUMNS = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]


def write_manifest(path: Path, rows: list[list[object]], header: list[str]) -> Path:
    """Writes a CSV file: ``header``, then ``rows``."""
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_esc50_meta(folder: Path, rows: list[list[object]]) -> Path:
    """Writes ``folder/meta/esc50.csv`` (rows in :data:`ESC50_COLUMNS` order)."""
    (folder / "meta").mkdir()
    return write_manifest(folder / "meta" / "esc50.csv", rows, ESC50_COLUMNS)
