"""Normalisation statistics stored per fold in ``cache_dir``: ``normalization-<key>.json``.

The key changes with everything the statistics depend on: the feature settings, where the
features come from (the float16 cache or the audio) and each training file's path, size and
mtime, so a changed setting or audio rewritten in place gets new statistics. A damaged file
is reported and computed again.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path

from add_lightning.atomic import remove_stale_temporary_files, write_text_atomic
from add_lightning.data.cache import file_fingerprints
from add_lightning.data.fbank import FbankOptions
from add_lightning.data.normalization import Normalization

log = logging.getLogger(__name__)


def normalization_file(
    cache_dir: Path,
    features: FbankOptions,
    from_cache: bool,
    paths: Iterable[str | os.PathLike[str]],
) -> Path:
    """The file that holds the statistics of the training files ``paths``.

    Args:
        cache_dir: The data module's cache folder.
        features: The filterbank settings of the features.
        from_cache: Whether the features are read from the float16 ``FeatureCache``.
        paths: The training split's audio files.
    """
    description = json.dumps(
        {
            "features": dataclasses.asdict(features),
            "from_cache": from_cache,
            "files": file_fingerprints(paths),
        },
        sort_keys=True,
    )
    key = hashlib.sha256(description.encode("utf-8")).hexdigest()[:20]
    return cache_dir / f"normalization-{key}.json"


def load_normalization(path: Path) -> Normalization | None:
    """The statistics stored in ``path``; None (and a warning) if it is damaged."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        mean, std = float(stored["mean"]), float(stored["std"])
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"mean {mean}, std {std}")
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning(
            "Normalisation statistics file %s is damaged (%s: %s); computing them again.",
            path,
            type(error).__name__,
            error,
        )
        return None
    return Normalization(mean=mean, std=std)


def store_normalization(path: Path, statistics: Normalization) -> None:
    """Writes ``statistics`` to ``path`` (atomically: readers never see half a file).

    The temporary files that killed processes left in the folder are removed first.

    Raises:
        OSError: If the folder is full, naming the file.
    """
    if path.parent.is_dir():
        remove_stale_temporary_files(path.parent)
    try:
        write_text_atomic(path, json.dumps({"mean": statistics.mean, "std": statistics.std}))
    except OSError as error:
        if error.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise
        raise OSError(
            error.errno, f"Cannot store the normalisation statistics {path}: {error.strerror}."
        ) from None


__all__ = ["load_normalization", "normalization_file", "store_normalization"]
