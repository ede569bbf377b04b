"""Hugging Face ``datasets`` as a source: a ``Dataset`` or ``DatasetDict`` with an ``Audio`` column.

The dataset comes from a ``save_to_disk`` folder (``datasets.load_from_disk``), another local
folder ``datasets.load_dataset`` reads (e.g. a copy of a hub dataset's files; its
``audiofolder`` builder needs ``torchcodec``, so a folder of class sub-folders is better read by
``FolderDataset``), or a hub id (``datasets.load_dataset``; offline, an error says how to save
it to disk elsewhere). It needs the optional dependency ``datasets``
(``pip install 'add-lightning[hf]'``).

Audio: the rest of the pipeline (``Clip``, ``ClipDataset``, ``FeatureCache``, the
normalisation statistics) reads clips by file path, so on ``prepare`` each clip's encoded audio
(the ``bytes`` the ``Audio`` column stores, read with ``Audio(decode=False)``) is written,
byte for byte, to a file under ``root/hf-<key>/``: no re-encoding and no decoder of
``datasets`` (whose ``datasets`` 4+ decoder needs ``torchcodec``). A clip stored as a path to an
existing local file instead of bytes is used in place. Every clip is then decoded by
``soundfile`` at its own sample rate and resampled by the pipeline to ``features.sample_rate``
(a ``sampling_rate`` cast of the ``Audio`` column is not applied, which avoids resampling twice);
each file is checked up front with ``soundfile.info``, so a format libsndfile cannot read
(e.g. AAC/M4A) is an error naming the row. ``key`` hashes the dataset's fingerprint (per split of
a ``DatasetDict``) and the column settings, so a changed dataset gets new files, and therefore
a new fbank cache and new normalisation statistics (both are keyed on the files); the export of
an older version of the same source is removed.

Labels: a ``ClassLabel`` column (its names) or a string column; class ids are positions in the
sorted names, not ``ClassLabel``'s own integers. Groups: ``fold_column`` (integers 1..K, for
``cv``), else ``split_column`` (``train``, ``validation``/``val``/``valid``/``dev``, ``test``),
else the split names of a ``DatasetDict``, else every clip is a training clip (use the
DataModule's ``val_fraction``). With a fold or split column the splits of a ``DatasetDict`` are
pooled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import soundfile

from add_lightning.atomic import atomic_directory
from add_lightning.data.datasets.base import AudioDatasetIndex, IndexEntry
from add_lightning.data.datasets.folder import _SPLIT_NAMES, AUDIO_EXTENSIONS
from add_lightning.hub import offline_hint

log = logging.getLogger(__name__)

EXPORT_FORMAT_VERSION = 1
_INDEX = "index.json"


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            "HuggingFaceDataset needs the `datasets` package: pip install 'add-lightning[hf]' "
            f"(or pip install datasets) ({error})."
        ) from error
    return datasets


class HuggingFaceDataset(AudioDatasetIndex):
    """Index of a Hugging Face ``datasets`` dataset with an ``Audio`` and a label column.

    Args:
        path: A ``save_to_disk`` folder, another local dataset folder, or a hub id
            (``"owner/name"``).
        root: Folder receiving the exported audio files (``root/hf-<key>/``).
        audio_column: The ``Audio`` column.
        label_column: The label column (``ClassLabel`` or strings).
        fold_column: An integer fold column (folds 1..K), or ``None``.
        split_column: A split-name column, or ``None``; not together with ``fold_column``.
        name: The configuration of a hub dataset (``load_dataset``'s ``name``).
        revision: The hub revision (branch, tag or commit).
        classes: A class subset to keep; ``None`` keeps every class.
    """

    def __init__(
        self,
        path: str,
        root: str = "data/hf_audio",
        audio_column: str = "audio",
        label_column: str = "label",
        fold_column: str | None = None,
        split_column: str | None = None,
        name: str | None = None,
        revision: str | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        if fold_column is not None and split_column is not None:
            raise ValueError(
                "Expected at most one of the arguments `fold_column` and `split_column` but got "
                f"fold_column={fold_column!r} and split_column={split_column!r}."
            )
        super().__init__(root, classes=classes)
        self.path = path
        self.audio_column = audio_column
        self.label_column = label_column
        self.fold_column = fold_column
        self.split_column = split_column
        self.name = name
        self.revision = revision
        self._splits: dict[str, Any] | None = None
        self._key: str | None = None

    # loading

    def _load(self) -> dict[str, Any]:
        """The dataset as ``{split name: datasets.Dataset}`` (``""`` for a single ``Dataset``)."""
        if self._splits is None:
            datasets = _import_datasets()
            loaded = self._load_source(datasets)
            if isinstance(loaded, datasets.DatasetDict):
                splits = {split: loaded[split] for split in sorted(loaded)}
            elif isinstance(loaded, datasets.Dataset):
                splits = {"": loaded}
            else:
                raise ValueError(
                    f"Expected `path` {self.path!r} to hold a datasets.Dataset or DatasetDict but "
                    f"got {type(loaded).__name__}."
                )
            if not splits:
                raise ValueError(f"The dataset {self.path!r} has no splits.")
            for split, dataset in splits.items():
                self._check_columns(split, dataset, datasets)
            self._splits = splits
        return self._splits

    def _load_source(self, datasets: Any) -> Any:
        path = os.path.expanduser(self.path)
        if os.path.isdir(path):
            markers = ("state.json", "dataset_dict.json")  # written by save_to_disk
            if any(os.path.isfile(os.path.join(path, marker)) for marker in markers):
                return datasets.load_from_disk(path)
            try:
                return datasets.load_dataset(path, name=self.name, revision=self.revision)
            except Exception as error:  # datasets raises many types; name the folder
                cause: BaseException | None = error
                while cause is not None and "torchcodec" not in str(cause):
                    cause = cause.__cause__
                hint = (
                    " datasets needs torchcodec to encode the audio of such a folder; "
                    if cause is not None
                    else " "
                )
                raise ValueError(
                    f"Could not load the local folder `path={self.path!r}` with "
                    f"datasets.load_dataset ({type(error).__name__}: {error}).{hint}a folder of "
                    "class sub-folders is read by FolderDataset, and a dataset written by "
                    "`save_to_disk` by HuggingFaceDataset."
                ) from error
        if path.startswith(("/", ".", "~")) or path.count("/") > 1 or os.path.exists(path):
            raise FileNotFoundError(
                f"Expected argument `path` to be a Hugging Face hub id or a folder written by "
                f"`save_to_disk`, but the folder {path!r} does not exist."
            )
        try:
            return datasets.load_dataset(path, name=self.name, revision=self.revision)
        except (OSError, ValueError) as error:  # ConnectionError is an OSError
            hint = offline_hint()
            raise OSError(
                f"Could not load the dataset `path={self.path!r}` ({error}). {hint}save it once "
                f"elsewhere with `datasets.load_dataset({self.path!r}).save_to_disk(DIR)` and "
                "pass `path: DIR` (a local folder)."
            ) from error

    def _check_columns(self, split: str, dataset: Any, datasets: Any) -> None:
        where = f"the dataset {self.path!r}" + (f" (split {split!r})" if split else "")
        features = dataset.features
        for argument in ("audio_column", "label_column", "fold_column", "split_column"):
            column = getattr(self, argument)
            if column is not None and column not in features:
                raise ValueError(
                    f"Expected argument `{argument}` to name a column of {where} but "
                    f"{column!r} is not among its columns {list(features)}."
                )
        if not isinstance(features[self.audio_column], datasets.Audio):
            raise ValueError(
                f"Expected the column `{self.audio_column}` of {where} to be an Audio column but "
                f"it is {features[self.audio_column]}; cast it with "
                f"`cast_column({self.audio_column!r}, datasets.Audio())`."
            )
        label = features[self.label_column]
        is_string = isinstance(label, datasets.Value) and label.dtype in ("string", "large_string")
        if not (isinstance(label, datasets.ClassLabel) or is_string):
            raise ValueError(
                f"Expected the label column `{self.label_column}` of {where} to be a ClassLabel "
                f"or a string column but it is {label}."
            )

    def _key_of(self) -> str:
        """The export key: the fingerprints of the splits and the column settings."""
        if self._key is None:
            splits = self._load()
            description = {
                "version": EXPORT_FORMAT_VERSION,
                "fingerprints": {s: getattr(d, "_fingerprint", None) for s, d in splits.items()},
                "columns": [self.audio_column, self.label_column, self.fold_column],
                "split_column": self.split_column,
            }
            encoded = json.dumps(description, sort_keys=True).encode("utf-8")
            self._key = hashlib.sha256(encoded).hexdigest()[:20]
        return self._key

    @property
    def export_dir(self) -> Path:
        """The folder of this dataset version's exported audio files and index."""
        self._require_folder("the exported audio files")
        return self.root / f"hf-{self._key_of()}"

    # the index interface

    def _label_names(self, dataset: Any) -> list[str] | None:
        feature = dataset.features[self.label_column]
        return list(feature.names) if hasattr(feature, "names") else None

    def _read_class_names(self) -> list[str]:
        names: set[str] = set()
        for dataset in self._load().values():
            declared = self._label_names(dataset)
            if declared is not None:
                names.update(declared)
            else:
                names.update(
                    str(v).strip() for v in dataset.unique(self.label_column) if v is not None
                )
        return sorted(names)

    def _read_folds(self) -> tuple[int, ...]:
        if self.fold_column is None:
            return ()
        folds: set[int] = set()
        for split, dataset in self._load().items():
            for value in dataset.unique(self.fold_column):
                folds.add(self._fold(value, split, None))
        return tuple(sorted(folds))

    def _fold(self, value: Any, split: str, row: int | None) -> int:
        if not isinstance(value, bool) and isinstance(value, (int, str)):
            try:
                return int(value)
            except ValueError:
                pass
        where = f"row {row}" if row is not None else "a row"
        raise ValueError(
            f"The dataset {self.path!r}{f' split {split!r}' if split else ''} {where}: "
            f"expected an integer in the fold column `{self.fold_column}` but got {value!r}."
        )

    def _group(self, split: str, row: int, record: dict[str, Any]) -> int | str:
        if self.fold_column is not None:
            return self._fold(record[self.fold_column], split, row)
        if self.split_column is not None:
            value = str(record[self.split_column]).strip().lower()
            column, where = self.split_column, f"row {row}"
        elif split:
            value, column, where = split.lower(), None, "the split name"
        else:
            return "train"
        if value not in _SPLIT_NAMES:
            source = f"column `{column}`" if column else "DatasetDict"
            raise ValueError(
                f"The dataset {self.path!r}{f' split {split!r}' if split else ''} {where}: "
                f"expected a split among {sorted(_SPLIT_NAMES)} in the {source} but got "
                f"{value!r}; set `fold_column` or `split_column` to group the clips otherwise."
            )
        return _SPLIT_NAMES[value]

    def prepare(self) -> None:
        """Exports the audio files (unless this dataset version is exported), then checks them."""
        self._export()
        super().prepare()

    def _read_entries(self) -> list[IndexEntry]:
        folder = self._export()
        stored = json.loads((folder / _INDEX).read_text(encoding="utf-8"))
        entries = []
        for file, label, group, clip_id in stored["rows"]:
            path = folder / file  # an absolute path (a clip used in place) stays absolute
            if not path.is_file():
                raise FileNotFoundError(
                    f"HuggingFaceDataset: the audio file {path} of clip {clip_id!r} does not "
                    f"exist; delete {folder} to export the dataset {self.path!r} again."
                )
            entries.append(IndexEntry(path=path, label=label, group=group, clip_id=clip_id))
        return entries

    # export

    def _export(self) -> Path:
        """Writes ``export_dir`` (files and ``index.json``) unless it exists; returns it."""
        folder = self.export_dir
        if (folder / _INDEX).is_file():
            return folder
        # another process may finish first: its identical copy is kept
        with atomic_directory(folder, is_complete=lambda f: (f / _INDEX).is_file()) as temporary:
            rows = self._write_clips(temporary)
            index = {**self._settings(), "key": self._key_of(), "rows": rows}
            (temporary / _INDEX).write_text(json.dumps(index), encoding="utf-8")
        log.info("Exported %d clips of the dataset %r to %s", len(rows), self.path, folder)
        self._remove_stale_exports(folder)
        return folder

    def _write_clips(self, folder: Path) -> list[list[Any]]:
        datasets = _import_datasets()
        rows: list[list[Any]] = []
        for split, dataset in self._load().items():
            names = self._label_names(dataset)
            columns = [c for c in (self.label_column, self.fold_column, self.split_column) if c]
            raw = dataset.select_columns([self.audio_column, *dict.fromkeys(columns)])
            raw = raw.cast_column(self.audio_column, datasets.Audio(decode=False))
            prefix = f"{split}/" if split else ""
            (folder / (split or ".")).mkdir(parents=True, exist_ok=True)
            for row, record in enumerate(raw):
                clip_id = f"{prefix}{row:06d}"
                label = self._label(record[self.label_column], names, split, row)
                file = self._write_audio(record[self.audio_column], folder, clip_id, split, row)
                rows.append([file, label, self._group(split, row, record), clip_id])
        return rows

    def _label(self, value: Any, names: list[str] | None, split: str, row: int) -> str:
        where = f"The dataset {self.path!r}{f' split {split!r}' if split else ''} row {row}"
        if names is not None:
            if not isinstance(value, int) or not 0 <= value < len(names):
                raise ValueError(
                    f"{where}: the label {value!r} of the ClassLabel column "
                    f"`{self.label_column}` is not one of its {len(names)} names (-1 = no label)."
                )
            return names[value]
        label = "" if value is None else str(value).strip()
        if not label:
            raise ValueError(f"{where}: the label column `{self.label_column}` is empty.")
        return label

    def _write_audio(
        self, audio: dict[str, Any] | None, folder: Path, clip_id: str, split: str, row: int
    ) -> str:
        """The clip's file name (relative to ``folder``, or absolute when used in place)."""
        where = f"The dataset {self.path!r}{f' split {split!r}' if split else ''} row {row}"
        data = None if audio is None else audio.get("bytes")
        source = None if audio is None else audio.get("path")
        if data:
            suffix = Path(source).suffix.lower() if source else ""
            file = f"{clip_id}{suffix if suffix in AUDIO_EXTENSIONS else '.audio'}"
            (folder / file).write_bytes(data)
            target = folder / file
        elif source and os.path.isfile(source):
            file = os.path.abspath(source)
            target = Path(file)
        else:
            raise ValueError(
                f"{where}: the Audio column `{self.audio_column}` holds neither bytes nor the "
                f"path of an existing file (path {source!r})."
            )
        try:
            soundfile.info(str(target))
        except (soundfile.LibsndfileError, RuntimeError) as error:
            raise ValueError(
                f"{where}: its audio ({source or 'bytes'}) is in a format libsndfile cannot "
                f"decode ({error}); convert the column to WAV or FLAC."
            ) from error
        return file

    def _settings(self) -> dict[str, Any]:
        """What identifies the source and the columns read, apart from the dataset's version."""
        return {
            "source": self.path,
            "name": self.name,
            "revision": self.revision,
            "columns": [self.audio_column, self.label_column, self.fold_column, self.split_column],
        }

    def _remove_stale_exports(self, current: Path) -> None:
        """Removes the exports of older versions of the same source read with the same columns."""
        for other in self.root.glob("hf-*"):
            if other == current or not (other / _INDEX).is_file():
                continue
            try:
                stored = json.loads((other / _INDEX).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            settings = self._settings()
            if all(stored.get(field) == value for field, value in settings.items()):
                shutil.rmtree(other, ignore_errors=True)
                log.info("Removed the export %s of an older version of %r", other, self.path)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_splits"] = None  # reloaded (memory-mapped) on demand
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r}, root={str(self.root)!r})"
