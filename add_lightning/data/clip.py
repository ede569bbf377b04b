"""One labelled audio file: what a dataset index yields and a clip dataset reads.

Standard library only, so that a metadata index needs neither torch nor the feature pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Clip"]


@dataclass(frozen=True)
class Clip:
    """One labelled audio file.

    Args:
        path: The audio file.
        label: Class index in ``[0, num_classes)`` (from sorted class names).
        clip_id: Stable id, e.g. the path relative to the dataset root without suffix.
    """

    path: Path
    label: int
    clip_id: str
