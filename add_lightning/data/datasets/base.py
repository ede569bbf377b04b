"""The dataset index: pure metadata (paths, class names, folds or splits), never audio samples.

An index knows its sorted ``class_names`` and yields ``Clip``s for a split of a fold. Class ids
are positions in the sorted class names, so they are identical across splits, folds and
processes (the authors' code numbered classes from ``list(set(labels))``, whose order changes
between processes).

A dataset is either fold-based (``folds`` non-empty, e.g. ESC-50's five folds): ``train`` is
every fold but ``fold``, ``validation`` and ``test`` are ``fold`` itself; or split-based
(``folds == ()``, e.g. Speech Commands' official lists): each clip belongs to ``train``,
``validation`` or ``test`` and ``fold`` must be ``None``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

from add_lightning.data.clip import Clip

log = logging.getLogger(__name__)

Split = Literal["train", "validation", "test"]
SPLITS: tuple[str, ...] = ("train", "validation", "test")


class IndexEntry(NamedTuple):
    """One clip of an index before class ids are assigned.

    Attributes:
        path: The audio file.
        label: The class name.
        group: The fold number (fold-based datasets) or the split name (split-based datasets).
        clip_id: A stable id, the path relative to the dataset folder without extension.
    """

    path: Path
    label: str
    group: int | str
    clip_id: str


def read_metadata_text(path: Path) -> str:
    """A metadata file (CSV, list) as text: UTF-8, with or without a byte-order mark.

    Raises:
        ValueError: If the file is not UTF-8, naming the file and the first bad byte.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path} line {line}: expected UTF-8 text but byte {error.start} is "
            f"{data[error.start : error.start + 1]!r}; save the file as UTF-8."
        ) from None


def relative_clip_id(path: Path, root: Path) -> str:
    """The id of ``path``: relative to ``root`` (when inside it), forward slashes, no suffix."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        relative = path
    return relative.with_suffix("").as_posix()


class AudioDatasetIndex(ABC):
    """Base class of the dataset indexes (ESC-50, Speech Commands, IEMOCAP, own data, synthetic).

    Subclasses implement ``_read_class_names`` and ``_read_entries`` (and ``_read_folds`` when
    fold-based); this class caches them, checks ``fold`` arguments and assigns class ids.

    A class subset (``classes``) keeps the named classes only: ``class_names`` is the sorted
    subset (so ids are positions in the subset, e.g. 10 words of Speech Commands get ids 0-9),
    clips of the other classes are dropped from every split and the kept and dropped counts are
    logged (INFO). Every name must be a class of the dataset.

    Args:
        root: The folder holding (or receiving) the dataset.
        classes: The class subset to keep (any order); ``None`` keeps every class.
    """

    def __init__(self, root: str | Path, classes: Sequence[str] | None = None) -> None:
        self.root = Path(root).expanduser()
        if classes is not None:
            if isinstance(classes, str) or not all(isinstance(name, str) for name in classes):
                raise ValueError(
                    "Expected argument `classes` to be None or a list of class names but got "
                    f"{classes!r}."
                )
            classes = [name.strip() for name in classes]
            duplicates = sorted(name for name, count in Counter(classes).items() if count > 1)
            if not classes or duplicates:
                raise ValueError(
                    "Expected argument `classes` to be None or a non-empty list of distinct class "
                    f"names but got {classes!r}."
                )
        self.classes: list[str] | None = None if classes is None else sorted(classes)
        self._all_class_names: list[str] | None = None
        self._class_names: list[str] | None = None
        self._folds: tuple[int, ...] | None = None
        self._entries: list[IndexEntry] | None = None

    def _require_folder(self, expected: str) -> None:
        """Raises unless ``root`` is a folder or absent (an audio file given as ``root``, say).

        Raises:
            NotADirectoryError: If ``root`` is a file, naming it and ``expected``.
        """
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(
                f"{type(self).__name__}: `root` {self.root} is a file; expected a folder "
                f"holding {expected}."
            )

    def prepare(self) -> None:
        """Downloads, generates or verifies the data; called once per node by ``prepare_data``.

        The default reads the whole index, which checks the metadata and that every file exists.
        """
        self.entries()

    @abstractmethod
    def _read_class_names(self) -> list[str]:
        """The class names, from metadata only (cheap: called when the DataModule is built)."""

    @abstractmethod
    def _read_entries(self) -> list[IndexEntry]:
        """Every clip of the dataset, checking that its file exists."""

    def _read_folds(self) -> tuple[int, ...]:
        """The fold numbers, from metadata only; ``()`` for split-based datasets."""
        return ()

    @property
    def class_names(self) -> list[str]:
        """The sorted class names (of the ``classes`` subset, if any); id = position in this list.

        Raises:
            ValueError: If a name of ``classes`` is not a class of the dataset.
        """
        if self._class_names is None:
            names = self.all_class_names
            if self.classes is not None:
                unknown = [name for name in self.classes if name not in names]
                if unknown:
                    raise ValueError(
                        f"Expected argument `classes` to name classes of {type(self).__name__} at "
                        f"{self.root} but {unknown} are not among its {len(names)} classes "
                        f"{names}."
                    )
                names = list(self.classes)
            self._class_names = names
        return list(self._class_names)

    @property
    def all_class_names(self) -> list[str]:
        """The sorted class names of the whole dataset, before a ``classes`` subset."""
        if self._all_class_names is None:
            names = sorted(self._read_class_names())
            if not names:
                raise ValueError(f"{type(self).__name__} at {self.root} has no classes.")
            if any(not name.strip() for name in names):
                raise ValueError(
                    f"{type(self).__name__} at {self.root}: a class name is empty {names}; "
                    "every clip needs a label."
                )
            duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
            if duplicates:
                raise ValueError(
                    f"{type(self).__name__} at {self.root}: duplicate class names {duplicates}."
                )
            self._all_class_names = names
        return list(self._all_class_names)

    @property
    def num_classes(self) -> int:
        """The number of classes C."""
        return len(self.class_names)

    @property
    def folds(self) -> tuple[int, ...]:
        """The fold numbers (sorted) of a fold-based dataset; ``()`` for a split-based one.

        Raises:
            ValueError: Unless the folds are numbered 1..K: a fold 0 or a stray fold 7 next to
                folds 1-5 would be trained on in every unit of ``cv --folds 1 2 3 4 5`` and
                tested in none.
        """
        if self._folds is None:
            folds = tuple(sorted(self._read_folds()))
            if folds and folds != tuple(range(1, len(folds) + 1)):
                raise ValueError(
                    f"{type(self).__name__} at {self.root}: expected folds numbered 1 to "
                    f"{len(folds)} but found {list(folds)}; renumber the folds in the metadata."
                )
            self._folds = folds
        return self._folds

    def entries(self) -> list[IndexEntry]:
        """Every clip of the dataset (read once, then cached), with labels checked."""
        if self._entries is None:
            entries = self._read_entries()
            known = set(self.all_class_names)
            seen: dict[Path, IndexEntry] = {}
            for entry in entries:
                if entry.label not in known:
                    raise ValueError(
                        f"{type(self).__name__}: clip {entry.path} has label {entry.label!r}, "
                        f"which is not one of the {len(known)} class names "
                        f"{self.all_class_names}."
                    )
                first = seen.setdefault(Path(entry.path).resolve(), entry)
                if first is not entry:  # a clip counted twice, or one clip in two classes
                    labels = (
                        f"twice with the label {entry.label!r}"
                        if first.label == entry.label
                        else f"under two labels, {first.label!r} and {entry.label!r}"
                    )
                    raise ValueError(
                        f"{type(self).__name__} at {self.root}: the clip {entry.path} is listed "
                        f"{labels}; each clip must appear once."
                    )
            if self.classes is not None:
                entries = self._keep_subset(entries)
            counts = Counter(entry.group for entry in entries)
            log.debug("%s at %s: clips per fold/split %s", type(self).__name__, self.root, counts)
            self._entries = entries
        return self._entries

    def _keep_subset(self, entries: list[IndexEntry]) -> list[IndexEntry]:
        """The entries of the ``classes`` subset; logs the clips kept per class and dropped."""
        subset = set(self.class_names)
        kept = [entry for entry in entries if entry.label in subset]
        per_class = Counter(entry.label for entry in kept)
        log.info(
            "%s at %s: class subset of %d of %d classes keeps %d of %d clips %s; %d clips of "
            "other classes dropped",
            type(self).__name__,
            self.root,
            len(subset),
            len(self.all_class_names),
            len(kept),
            len(entries),
            {name: per_class[name] for name in self.class_names},
            len(entries) - len(kept),
        )
        empty = [name for name in self.class_names if per_class[name] == 0]
        if empty:
            log.warning(
                "%s at %s: the classes %s have no clips.", type(self).__name__, self.root, empty
            )
        return kept

    def check_fold(self, fold: int | None) -> None:
        """Raises ``ValueError`` unless ``fold`` suits the dataset (a fold number, or ``None``)."""
        folds = self.folds
        if folds:
            if isinstance(fold, bool) or fold not in folds:
                raise ValueError(
                    f"Expected argument `fold` to be one of the folds {list(folds)} of "
                    f"{type(self).__name__} at {self.root} but got {fold!r}."
                )
        elif fold is not None:
            raise ValueError(
                f"Expected argument `fold` to be None for {type(self).__name__} at {self.root}, "
                f"which has fixed train/validation/test splits and no folds, but got {fold!r}."
            )

    def clips(self, split: Split, fold: int | None = None) -> list[Clip]:
        """The clips of one split, in index order.

        Args:
            split: ``"train"``, ``"validation"`` or ``"test"``.
            fold: For fold-based datasets the held-out fold (``validation`` and ``test`` are this
                fold, ``train`` all others); ``None`` for split-based datasets.
        """
        if split not in SPLITS:
            raise ValueError(f"Expected argument `split` to be one of {SPLITS} but got {split!r}.")
        self.check_fold(fold)
        ids = {name: index for index, name in enumerate(self.class_names)}
        if self.folds:
            selected = [
                entry
                for entry in self.entries()
                if (entry.group == fold) == (split != "train")  # held out fold vs the rest
            ]
        else:
            selected = [entry for entry in self.entries() if entry.group == split]
        return [Clip(path=e.path, label=ids[e.label], clip_id=e.clip_id) for e in selected]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r})"
