"""Which clips and classes are held out: the validation hold-out and the unseen classes.

Both are seeded draws from metadata alone (clip labels, class names), so every rank and every
rerun holds out the same clips.
"""

from __future__ import annotations

from collections.abc import Sequence

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


__all__ = ["draw_unseen_classes", "split_off_validation"]
