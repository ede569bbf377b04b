"""Own data: a folder with one sub-folder per class, or a CSV manifest.

Folder form::

    root/<class name>/**/<clip>.<wav|flac|ogg|...>

Sub-folders whose name starts with ``_`` are not classes (e.g. Speech Commands'
``_background_noise_``): each one that holds audio files is named in a WARNING. Hidden files and
folders (``.x``) are skipped without a word.

Manifest form (a CSV file with a header; ``fold`` or ``split`` optional, not both)::

    path,label[,fold|split]
    dog/001.wav,dog,1            # relative paths are relative to the manifest's folder

``split`` values are ``train``, ``validation`` (or ``val``, ``valid``, ``dev``) and ``test``.
Without a fold or split column every clip is a training clip; ``num_folds`` then assigns
seeded, class-stratified folds (so cross-validation works on any folder of labelled clips), or
the DataModule's ``val_fraction`` holds out a validation part.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from add_lightning.data.datasets.base import (
    AudioDatasetIndex,
    IndexEntry,
    read_metadata_text,
    relative_clip_id,
)

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
_SPLIT_NAMES = {
    "train": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "dev": "validation",
    "test": "test",
}

_EXPECTED_ROOT = (
    "expected a folder with one sub-folder per class or a CSV manifest file "
    "(path,label[,fold|split])"
)


class FolderDataset(AudioDatasetIndex):
    """Index of own labelled clips: class sub-folders or a CSV manifest.

    Args:
        root: A folder with one sub-folder per class, or a CSV manifest file
            (``path,label[,fold|split]``).
        class_names: The classes (any order; ids follow the sorted names). A clip whose label
            is not among them is an error. Default: the labels found.
        num_folds: For data without fold/split information: assign each class's clips to folds
            ``1..num_folds`` (seeded shuffle, round robin). ``None`` makes every clip a
            training clip. Not used for a manifest with a fold or split column.
        seed: Seed of the fold assignment.
        extensions: File name endings counted as audio in the folder form.
        classes: A class subset to keep (clips of other classes are dropped, unlike
            ``class_names``, which makes them an error); ``None`` keeps every class.
    """

    def __init__(
        self,
        root: str,
        class_names: list[str] | None = None,
        num_folds: int | None = None,
        seed: int = 0,
        extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
        classes: list[str] | None = None,
    ) -> None:
        super().__init__(root, classes=classes)
        if num_folds is not None and (isinstance(num_folds, bool) or num_folds < 2):
            raise ValueError(
                "Expected argument `num_folds` to be None or an integer >= 2 but got "
                f"{num_folds!r}."
            )
        if class_names is not None and len(class_names) == 0:
            raise ValueError("Expected argument `class_names` to be None or non-empty but got [].")
        self.given_class_names = None if class_names is None else list(class_names)
        self.num_folds = num_folds
        self.seed = seed
        self.extensions = tuple(extension.lower() for extension in extensions)
        self._manifest_rows: list[tuple[int, dict[str, str]]] | None = None
        self._folders: list[Path] | None = None

    @property
    def is_manifest(self) -> bool:
        """Whether ``root`` is a CSV manifest (otherwise a folder of class sub-folders)."""
        return self.root.is_file()

    def _require_root(self) -> None:
        if not self.root.exists():
            raise FileNotFoundError(
                f"FolderDataset: `root` {self.root} does not exist; {_EXPECTED_ROOT}."
            )
        if self.is_manifest and self.root.suffix.lower() in {*AUDIO_EXTENSIONS, *self.extensions}:
            raise NotADirectoryError(
                f"FolderDataset: `root` {self.root} is an audio file; {_EXPECTED_ROOT}."
            )

    # manifest form

    def _rows(self) -> list[tuple[int, dict[str, str]]]:
        if self._manifest_rows is None:
            try:
                text = read_metadata_text(self.root)
            except ValueError:
                if self.root.suffix.lower() == ".csv":
                    raise
                raise NotADirectoryError(
                    f"FolderDataset: `root` {self.root} is a file that is not UTF-8 text; "
                    f"{_EXPECTED_ROOT}."
                ) from None
            with io.StringIO(text, newline="") as stream:
                reader = csv.DictReader(stream)
                columns = [name.strip() for name in reader.fieldnames or []]
                reader.fieldnames = columns
                missing = [name for name in ("path", "label") if name not in columns]
                if missing:
                    raise ValueError(
                        f"Manifest {self.root} lacks the columns {missing}: expected a header "
                        f"path,label[,fold|split] but found {columns}."
                    )
                if "fold" in columns and "split" in columns:
                    raise ValueError(
                        f"Manifest {self.root} has both a `fold` and a `split` column; expected "
                        "at most one of them."
                    )
                rows = [(reader.line_num, row) for row in reader]
            if not rows:
                raise ValueError(f"Manifest {self.root} has no rows.")
            self._manifest_rows = rows
        return self._manifest_rows

    def _manifest_column(self) -> str | None:
        columns = self._rows()[0][1].keys()
        return "fold" if "fold" in columns else "split" if "split" in columns else None

    def _manifest_group(self, row: dict[str, str], line: int) -> int | str:
        column = self._manifest_column()
        value = (row.get(column) or "").strip() if column else ""
        if column == "fold":
            try:
                return int(value)
            except ValueError:
                raise ValueError(
                    f"Manifest {self.root} line {line}: expected an integer fold but got {value!r}."
                ) from None
        if column == "split":
            if value.lower() not in _SPLIT_NAMES:
                raise ValueError(
                    f"Manifest {self.root} line {line}: expected a split among "
                    f"{sorted(_SPLIT_NAMES)} but got {value!r}."
                )
            return _SPLIT_NAMES[value.lower()]
        return "train"

    def _manifest_entries(self) -> list[IndexEntry]:
        base = self.root.parent
        entries = []
        for line, row in self._rows():
            relative = (row.get("path") or "").strip()
            label = (row.get("label") or "").strip()
            if not relative or not label:
                raise ValueError(
                    f"Manifest {self.root} line {line}: expected a path and a label but got "
                    f"path={relative!r}, label={label!r}."
                )
            path = (base / relative).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"Manifest {self.root} line {line} refers to {path}, which does not exist."
                )
            if self.given_class_names is not None and label not in self.given_class_names:
                raise ValueError(
                    f"Manifest {self.root} line {line}: label {label!r} is not one of the given "
                    f"`class_names` {sorted(self.given_class_names)}."
                )
            entries.append(
                IndexEntry(
                    path=path,
                    label=label,
                    group=self._manifest_group(row, line),
                    clip_id=relative_clip_id(path, base),
                )
            )
        return entries

    # folder form

    def _class_folders(self) -> list[Path]:
        """The class folders (read once); warns about the ``_`` folders that hold audio."""
        if self._folders is None:
            children = sorted(p for p in self.root.iterdir() if p.is_dir())
            skipped = {  # "_" folders with their audio file counts
                p.name: count
                for p in children
                if p.name.startswith("_") and (count := len(self._audio_files(p)))
            }
            if skipped:
                log.warning(
                    "FolderDataset at %s: the folders %s (audio files: %s) are not classes, as "
                    "their names start with '_'; their clips are not used.",
                    self.root,
                    list(skipped),
                    list(skipped.values()),
                )
            folders = [p for p in children if not p.name.startswith((".", "_"))]
            if not folders:
                raise FileNotFoundError(
                    f"FolderDataset: {self.root} has no class sub-folders; expected "
                    f"{self.root}/<class name>/<clip>.wav."
                )
            self._folders = folders
        return self._folders

    def _audio_files(self, folder: Path) -> list[Path]:
        """The audio files below ``folder``, sorted, without hidden files and folders."""
        return sorted(
            p
            for p in folder.rglob("*")
            if p.suffix.lower() in self.extensions
            # hidden files and folders, e.g. macOS's "._clip.wav" resource forks
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
            and p.is_file()
        )

    def _folder_entries(self) -> list[IndexEntry]:
        entries = []
        for folder in self._class_folders():
            if self.given_class_names is not None and folder.name not in self.given_class_names:
                raise ValueError(
                    f"FolderDataset: class folder {folder} is not one of the given "
                    f"`class_names` {sorted(self.given_class_names)}."
                )
            files = self._audio_files(folder)
            if not files:
                raise FileNotFoundError(
                    f"FolderDataset: class folder {folder} holds no audio files with the "
                    f"extensions {list(self.extensions)}."
                )
            entries.extend(
                IndexEntry(
                    path=p, label=folder.name, group="train", clip_id=relative_clip_id(p, self.root)
                )
                for p in files
            )
        return entries

    # the index interface

    def _read_class_names(self) -> list[str]:
        if self.given_class_names is not None:
            return self.given_class_names
        self._require_root()
        if self.is_manifest:
            return sorted({(row.get("label") or "").strip() for _, row in self._rows()} - {""})
        return [folder.name for folder in self._class_folders()]

    def _has_own_groups(self) -> bool:
        return self.is_manifest and self._manifest_column() is not None

    def _read_folds(self) -> tuple[int, ...]:
        self._require_root()
        if self._has_own_groups():
            if self.num_folds is not None:
                # The manifest's own column wins: configs/data/folder.yaml sets num_folds for
                # folders, and a command-line `num_folds null` this deep is not parsed.
                log.info(
                    "Manifest %s has its own `%s` column: num_folds=%s is not used.",
                    self.root,
                    self._manifest_column(),
                    self.num_folds,
                )
            if self._manifest_column() == "fold":
                return tuple(
                    sorted({int(self._manifest_group(row, line)) for line, row in self._rows()})
                )
            return ()
        return tuple(range(1, self.num_folds + 1)) if self.num_folds else ()

    def _read_entries(self) -> list[IndexEntry]:
        self._require_root()
        entries = self._manifest_entries() if self.is_manifest else self._folder_entries()
        if self.num_folds and not self._has_own_groups():
            entries = self._assign_folds(entries)
        return entries

    def _assign_folds(self, entries: list[IndexEntry]) -> list[IndexEntry]:
        """Class-stratified folds: each class's clips shuffled (seeded) and dealt round robin."""
        rng = np.random.default_rng(self.seed)
        by_label: dict[str, list[int]] = {}
        for index, entry in enumerate(entries):
            by_label.setdefault(entry.label, []).append(index)
        folds = [0] * len(entries)
        for label in sorted(by_label):
            indices = by_label[label]
            for position, permuted in enumerate(rng.permutation(len(indices))):
                folds[indices[permuted]] = position % self.num_folds + 1
        return [entry._replace(group=fold) for entry, fold in zip(entries, folds)]
