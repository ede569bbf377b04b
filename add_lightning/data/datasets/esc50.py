"""ESC-50: 2,000 environmental sound clips, 50 classes, official 5-fold cross-validation.

Layout (the GitHub archive karolpiczak/ESC-50, master.zip)::

    ESC-50-master/audio/{fold}-{clip_id}-{take}-{target}.wav
    ESC-50-master/meta/esc50.csv   # filename,fold,target,category,esc10,src_file,take

Class ids are positions in the sorted ``category`` names (the project rule), not the CSV's
``target`` column, which numbers the classes in the dataset's own order (``dog`` = 0,
``rooster`` = 1, ...): e.g. ``airplane`` is id 0 here and target 47 in the CSV.

ESC-10 (``classes="esc10"``) is the 10-class subset the CSV marks in its ``esc10`` column
(``True`` for the 400 clips of chainsaw, clock_tick, crackling_fire, crying_baby, dog,
helicopter, rain, rooster, sea_waves and sneezing), with the same five folds.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from add_lightning.data.datasets.base import AudioDatasetIndex, IndexEntry, read_metadata_text
from add_lightning.data.datasets.downloadable import DownloadableDataset

log = logging.getLogger(__name__)

ESC50_URL = "https://github.com/karolpiczak/ESC-50/archive/master.zip"
"""GitHub builds this archive on request, so its bytes (and checksum) are not guaranteed stable;
no default checksum is recorded and the download is unverified unless one is passed."""

ESC50_FOLDER = "ESC-50-master"
ESC50_CSV = Path("meta") / "esc50.csv"
ESC50_REQUIRED_COLUMNS = ("filename", "fold", "category")

ESC50_CLASS_NAMES: tuple[str, ...] = (
    "airplane", "breathing", "brushing_teeth", "can_opening", "car_horn", "cat", "chainsaw",
    "chirping_birds", "church_bells", "clapping", "clock_alarm", "clock_tick", "coughing", "cow",
    "crackling_fire", "crickets", "crow", "crying_baby", "dog", "door_wood_creaks",
    "door_wood_knock", "drinking_sipping", "engine", "fireworks", "footsteps", "frog",
    "glass_breaking", "hand_saw", "helicopter", "hen", "insects", "keyboard_typing", "laughing",
    "mouse_click", "pig", "pouring_water", "rain", "rooster", "sea_waves", "sheep", "siren",
    "sneezing", "snoring", "thunderstorm", "toilet_flush", "train", "vacuum_cleaner",
    "washing_machine", "water_drops", "wind",
)  # fmt: skip
"""The 50 ESC-50 categories, sorted: used before the archive is downloaded."""

ESC50_FOLDS = (1, 2, 3, 4, 5)

ESC10_CLASS_NAMES: tuple[str, ...] = (
    "chainsaw", "clock_tick", "crackling_fire", "crying_baby", "dog", "helicopter", "rain",
    "rooster", "sea_waves", "sneezing",
)  # fmt: skip
"""The 10 ESC-10 categories (``esc10`` column ``True``), sorted: used before the download."""


class ESC50LayoutIndex(AudioDatasetIndex):
    """The reader of the ESC-50 layout (``meta/esc50.csv`` and ``audio/``), for ESC-50 and the
    data sets written in it (:class:`~add_lightning.data.SyntheticDataset`).

    Subclasses provide ``data_root``/``_require_data_root``; ``_fallback_class_names`` and
    ``_fallback_folds`` give names and folds before the data exists (``None``: read them), and
    ``_selected_rows`` picks the CSV rows that belong to the data set (all by default).
    """

    def _fallback_class_names(self) -> list[str] | None:
        """Class names before the data exists (when it can be fetched), else ``None``."""
        return None

    def _fallback_folds(self) -> tuple[int, ...] | None:
        return None

    def _read_rows(self) -> tuple[Path, list[tuple[int, dict[str, str]]]]:
        """The CSV path and its rows with their line numbers, columns checked."""
        csv_path = self._require_data_root() / ESC50_CSV
        with io.StringIO(read_metadata_text(csv_path), newline="") as stream:
            reader = csv.DictReader(stream)
            missing = [c for c in ESC50_REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(
                    f"ESC-50 metadata {csv_path} lacks the columns {missing}: expected "
                    f"{list(ESC50_REQUIRED_COLUMNS)} but found {reader.fieldnames}."
                )
            rows = [(reader.line_num, row) for row in reader]
        if not rows:
            raise ValueError(f"ESC-50 metadata {csv_path} has no rows.")
        for line, row in rows:
            empty = [c for c in ("filename", "category", "fold") if not (row[c] or "").strip()]
            if empty:
                raise ValueError(
                    f"ESC-50 metadata {csv_path} line {line}: the columns {empty} are empty."
                )
        return csv_path, rows

    def _selected_rows(
        self, rows: list[tuple[int, dict[str, str]]], csv_path: Path
    ) -> list[tuple[int, dict[str, str]]]:
        return rows

    def _read_class_names(self) -> list[str]:
        if self.data_root() is None and (names := self._fallback_class_names()) is not None:
            return names
        _, rows = self._read_rows()
        return sorted({row["category"].strip() for _, row in rows})

    def _read_folds(self) -> tuple[int, ...]:
        if self.data_root() is None and (folds := self._fallback_folds()) is not None:
            return folds
        csv_path, rows = self._read_rows()
        return tuple(sorted({_parse_fold(row["fold"], csv_path, line) for line, row in rows}))

    def _read_entries(self) -> list[IndexEntry]:
        csv_path, rows = self._read_rows()
        rows = self._selected_rows(rows, csv_path)
        data_root = csv_path.parent.parent
        audio = data_root / "audio"
        present = set(os.listdir(audio)) if audio.is_dir() else set()
        entries = []
        for line, row in rows:
            filename = row["filename"].strip()
            if filename not in present:
                raise FileNotFoundError(
                    f"ESC-50 metadata {csv_path} line {line} refers to {audio / filename}, "
                    "which does not exist."
                )
            path = audio / filename
            entries.append(
                IndexEntry(
                    path=path,
                    label=row["category"].strip(),
                    group=_parse_fold(row["fold"], csv_path, line),
                    clip_id=Path(filename).stem,
                )
            )
        log.debug("Read %d ESC-50 clips from %s", len(entries), csv_path)
        return entries


class ESC50(DownloadableDataset, ESC50LayoutIndex):
    """Index of ESC-50 in its official layout.

    Args:
        root: The ``ESC-50-master`` folder (holding ``meta/`` and ``audio/``) or its parent.
        download: Download and extract the GitHub archive into ``root`` when the data is absent.
        url: Archive address (http, https or file URL).
        sha256: Expected SHA-256 of the archive; ``None`` downloads unverified (see ``ESC50_URL``).
        md5: Expected MD5 of the archive, as an alternative to ``sha256``.
        classes: A class subset (category names), ``"esc10"`` for the ESC-10 clips of the
            ``esc10`` column, or ``None`` for all 50 classes.
    """

    archive_folder = ESC50_FOLDER
    data_files = (ESC50_CSV,)
    data_name = "ESC50 metadata"
    archive_filename = f"{ESC50_FOLDER}.zip"
    strip_components = 1

    def __init__(
        self,
        root: str,
        download: bool = False,
        url: str = ESC50_URL,
        sha256: str | None = None,
        md5: str | None = None,
        classes: Sequence[str] | Literal["esc10"] | None = None,
    ) -> None:
        if isinstance(classes, str) and classes != "esc10":
            raise ValueError(
                'Expected argument `classes` to be None, "esc10" or a list of category names but '
                f"got {classes!r}."
            )
        self.esc10 = classes == "esc10"
        super().__init__(root, download, url, sha256, md5, None if self.esc10 else classes)

    def _fallback_class_names(self) -> list[str] | None:
        """Class names before the data exists (when it can be fetched), else ``None``."""
        return list(ESC50_CLASS_NAMES) if self.download else None

    def _fallback_folds(self) -> tuple[int, ...] | None:
        return ESC50_FOLDS if self.download else None

    @property
    def class_names(self) -> list[str]:
        """The sorted class names (of the subset, if any); class id = position in this list."""
        if self.esc10 and self.classes is None:
            self.classes = self._esc10_class_names()
        return super().class_names

    def _esc10_class_names(self) -> list[str]:
        """The categories of the clips whose ``esc10`` column is true."""
        if self.data_root() is None and self.download:
            return list(ESC10_CLASS_NAMES)
        csv_path, rows = self._read_rows()
        names = sorted({row["category"].strip() for _, row in rows if _is_esc10(row, csv_path)})
        if not names:
            raise ValueError(
                f"ESC-50 metadata {csv_path} marks no clip as ESC-10 (column `esc10` is never "
                '"True"), so `classes="esc10"` selects nothing.'
            )
        return names

    def _selected_rows(
        self, rows: list[tuple[int, dict[str, str]]], csv_path: Path
    ) -> list[tuple[int, dict[str, str]]]:
        if not self.esc10:
            return rows
        self.class_names  # noqa: B018 (sets the subset)
        return [(line, row) for line, row in rows if _is_esc10(row, csv_path)]


def _is_esc10(row: dict[str, str], csv_path: Path) -> bool:
    value = row.get("esc10")
    if value is None:
        raise ValueError(
            f'ESC-50 metadata {csv_path} has no `esc10` column, which `classes="esc10"` reads.'
        )
    return value.strip().lower() in ("true", "1")


def _parse_fold(value: str, csv_path: Path, line: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"ESC-50 metadata {csv_path} line {line}: expected an integer fold but got {value!r}."
        ) from None
