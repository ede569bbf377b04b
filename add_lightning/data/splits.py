"""Which clips and classes are held out, and that held-out clips are really held out.

The validation hold-out and the unseen classes are seeded draws from metadata alone (clip
labels, class names), so every rank and every rerun holds out the same clips. The same audio
under two names (a hardlink, a symlink or a byte copy) in a training and a held-out split would
test on training clips; :func:`shared_audio` finds such files.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path

import numpy as np

from add_lightning.data.clip import Clip


def split_off_validation(
    clips: Sequence[Clip], fraction: float, seed: int
) -> tuple[list[Clip], list[Clip]]:
    """Holds out ``fraction`` of each class's clips (seeded, stratified) as a validation split.

    Returns:
        ``(train, validation)``, both in the order of ``clips``.
    """
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[int]] = {}
    for index, clip in enumerate(clips):
        by_label.setdefault(clip.label, []).append(index)
    held_out: set[int] = set()
    for label in sorted(by_label):
        indices = by_label[label]
        count = min(len(indices) - 1, round(fraction * len(indices)))
        held_out.update(indices[i] for i in rng.permutation(len(indices))[:count])
    if not held_out:
        raise ValueError(
            f"`val_fraction`={fraction} of {len(clips)} training clips leaves no validation clip; "
            "use a larger fraction."
        )
    train = [clip for index, clip in enumerate(clips) if index not in held_out]
    validation = [clip for index, clip in enumerate(clips) if index in held_out]
    return train, validation


def draw_unseen_classes(
    class_names: list[str], unseen_classes: int | Sequence[str], seed: int
) -> list[str] | None:
    """The sorted names of the held-out classes (see ``AudioDataModule``), None for none.

    Raises:
        ValueError: If ``unseen_classes`` is not a count or list of known, distinct names that
            leaves at least 2 classes on each side.
    """
    total = len(class_names)
    if isinstance(unseen_classes, int) and not isinstance(unseen_classes, bool):
        if unseen_classes == 0:
            return None
        count = unseen_classes
        rng = np.random.default_rng(seed)
        chosen = rng.choice(total, size=count, replace=False) if 2 <= count <= total else []
        names = [class_names[i] for i in chosen]
    elif isinstance(unseen_classes, Sequence) and not isinstance(unseen_classes, str):
        names = [str(name) for name in unseen_classes]
        unknown = [name for name in names if name not in class_names]
        if unknown or len(set(names)) != len(names):
            raise ValueError(
                "Expected argument `unseen_classes` to name distinct classes of the dataset "
                f"(e.g. {class_names[:3]}) but got {list(unseen_classes)!r} "
                f"({'unknown: ' + ', '.join(unknown) if unknown else 'repeated names'})."
            )
        count = len(names)
    else:
        raise ValueError(
            "Expected argument `unseen_classes` to be a number of classes or a list of class "
            f"names but got {unseen_classes!r}."
        )
    if not 2 <= count <= total - 2:
        raise ValueError(
            f"Expected argument `unseen_classes` to hold out 0 or between 2 and {total - 2} of the "
            f"{total} classes (at least 2 unseen to retrieve among, 2 seen to train on) but got "
            f"{unseen_classes!r}."
        )
    return sorted(names)


def classes_short_of_folds(
    labels_and_folds: Iterable[tuple[str, int]], folds: Sequence[int]
) -> dict[str, dict[int, int]]:
    """The classes that a fold tests without or trains without, with their clips per fold.

    A class with fewer clips than folds is absent from some test folds; a class whose clips
    all lie in one fold is absent from that fold's training split but in its test split.

    Args:
        labels_and_folds: ``(class name, fold)`` of every clip.
        folds: The dataset's folds.

    Returns:
        ``{class name: {fold: clips}}`` of those classes, sorted by name.
    """
    per_class: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for label, fold in labels_and_folds:
        per_class[label][fold] += 1
    return {
        label: dict(sorted(counts.items()))
        for label, counts in sorted(per_class.items())
        if len(folds) > 1 and (sum(counts.values()) < len(folds) or len(counts) == 1)
    }


#: Bytes hashed first; only files whose first bytes collide are hashed whole.
HEAD_BYTES = 64 * 1024


def _digest(path: Path, limit: int | None) -> bytes:
    """BLAKE2b of the first ``limit`` bytes of ``path`` (all of it for ``None``)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as stream:
        if limit is not None:
            digest.update(stream.read(limit))
        else:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return digest.digest()


def shared_audio(
    train: Iterable[Path], held_out: Iterable[Path]
) -> list[tuple[list[Path], list[Path]]]:
    """Files of ``held_out`` whose bytes are those of a file of ``train`` under another name.

    Exact and cheap: paths are grouped by device and inode (hardlinks and symlinks are one
    file), then files by size; only files whose size occurs on both sides are read, first their
    first ``HEAD_BYTES`` and, where those collide too, whole. For 2,000 same-size clips of
    which none share their first 64 KiB that reads 128 MiB.

    Returns:
        One ``(training paths, held-out paths)`` pair per content found on both sides, sorted.
    """
    sides: dict[tuple[int, int], tuple[list[Path], list[Path]]] = {}  # per file (inode)
    sizes: dict[tuple[int, int], int] = {}
    for side, paths in enumerate((train, held_out)):
        for path in dict.fromkeys(Path(p) for p in paths):
            status = os.stat(path)
            file = (status.st_dev, status.st_ino)
            sides.setdefault(file, ([], []))[side].append(path)
            sizes[file] = status.st_size

    def read(file: tuple[int, int], limit: int | None) -> bytes:
        train_paths, held_out_paths = sides[file]
        return _digest((train_paths or held_out_paths)[0], limit)

    keys: list[Callable[[tuple[int, int]], Hashable]] = [
        sizes.__getitem__,
        lambda file: read(file, HEAD_BYTES),
        lambda file: b"" if sizes[file] <= HEAD_BYTES else read(file, None),
    ]
    groups = [list(sides)]
    for key in keys:  # each step splits the groups further and keeps those on both sides
        split: dict[Hashable, list[tuple[int, int]]] = defaultdict(list)
        for index, group in enumerate(groups):
            for file in group:
                split[index, key(file) if len(group) > 1 else None].append(file)
        groups = [
            group
            for group in split.values()
            if any(sides[file][0] for file in group) and any(sides[file][1] for file in group)
        ]
    return sorted(
        (
            sorted(path for file in group for path in sides[file][0]),
            sorted(path for file in group for path in sides[file][1]),
        )
        for group in groups
    )


__all__ = [
    "HEAD_BYTES",
    "classes_short_of_folds",
    "draw_unseen_classes",
    "shared_audio",
    "split_off_validation",
]
