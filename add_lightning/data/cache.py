"""An on-disk, memory-mapped cache of un-augmented, un-normalised fbanks, built once per dataset.

Layout in ``cache_dir``: ``fbank-<key>.npy`` (a ``[num_clips, T, F]`` array read with
``mmap_mode="r"``) and ``fbank-<key>.json`` (the manifest: key, shape, dtype, clip paths in row
order and each clip's frame count before padding). The key hashes a format version, every
``FbankOptions`` field, the dtype and each file's absolute path, size and mtime, so changing any
of them selects a new cache. The array is written under a temporary name and renamed when
complete, and the manifest is written last, so an interrupted build leaves nothing that is
trusted; the next build removes the temporary files of builds whose process no longer runs. Its
space is reserved before any clip is decoded, so a full disk fails the build at once. A cache
whose manifest is missing or unreadable, or disagrees with the key, clip list, shape, dtype or
file size, is rebuilt; a build removes the caches of the same files and settings that older
versions of the files left behind. Bit flips inside a complete file are not detected, except
non-finite values, which a lookup reports.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib import format as npy_format
from torch import Tensor
from tqdm.auto import tqdm

from ..atomic import atomic_path, remove_stale_temporary_files, write_text_atomic
from .audio import AudioError
from .fbank import FbankOptions, load_fbank_frames, pad_or_crop

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # a full disk or quota
_DTYPES = ("float16", "float32")


def _progress(paths: Sequence[str], enabled: bool) -> Iterable[str]:
    """``paths``, showing how far a build has come: a tqdm bar on a terminal, log lines else.

    Written to a file, a tqdm bar is one line of carriage-return updates (7,917 characters for
    400 clips); a line at every tenth of the clips reads as a log.
    """
    if not enabled:
        return paths
    if sys.stderr.isatty():
        return tqdm(paths, desc="fbank cache", unit="clip")
    return _logged_progress(paths)


def _logged_progress(paths: Sequence[str]) -> Iterator[str]:
    step = max(1, math.ceil(len(paths) / 10))
    for done, path in enumerate(paths, start=1):
        yield path
        if done % step == 0 or done == len(paths):
            log.info("fbank cache: %d/%d clips", done, len(paths))


def file_fingerprints(paths: Iterable[str | os.PathLike[str]]) -> list[list[Any]]:
    """``[absolute path, size, mtime in ns]`` of each file: what a cache key must change with.

    Raises:
        AudioError: If a file does not exist.
    """
    fingerprints = []
    for path in paths:
        path = os.path.abspath(path)
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise AudioError(f"Audio file {path} does not exist.") from None
        fingerprints.append([path, stat.st_size, stat.st_mtime_ns])
    return fingerprints


class FeatureCache:
    """Precomputed fbanks of a fixed list of audio files, looked up by path.

    Building decodes every file once with ``load_fbank_frames`` (showing a tqdm bar on a
    terminal, a log line every tenth of the clips otherwise); afterwards
    lookups read one row of the memory-mapped array and decode no audio. The build happens in
    ``build()`` or, failing that, on the first lookup. The object pickles without the memory
    map (workers reopen it lazily), so DataLoader workers share the page cache instead of
    copying the array.

    Args:
        cache_dir: Folder for the cache files (created if missing).
        paths: The audio files; duplicates are dropped and rows follow sorted absolute paths.
        options: The filterbank settings; ``target_frames`` fixes T.
        dtype: Storage type, ``"float16"`` (half the disk and page cache; log-mel values are
            stored to about 3 significant digits) or ``"float32"``.
        progress: Show the progress of a build (a tqdm bar when stderr is a terminal, else
            log lines).

    Raises:
        AudioError: If a file does not exist (checked up front, while computing the key).
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str],
        paths: Iterable[str | os.PathLike[str]],
        options: FbankOptions,
        dtype: str = "float16",
        progress: bool = True,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"Expected argument `dtype` to be one of {_DTYPES} but got {dtype!r}.")
        if not isinstance(options, FbankOptions):
            raise ValueError(
                f"Expected argument `options` to be FbankOptions but got {type(options).__name__}."
            )
        self.cache_dir = Path(cache_dir)
        self.options = options
        self.dtype = dtype
        self.progress = progress
        self.paths: list[str] = sorted({os.path.abspath(p) for p in paths})
        if not self.paths:
            raise ValueError("Expected argument `paths` to name at least one file but it is empty.")
        self._rows = {path: row for row, path in enumerate(self.paths)}
        self.key = self._compute_key()
        self.array_path = self.cache_dir / f"fbank-{self.key}.npy"
        self.manifest_path = self.cache_dir / f"fbank-{self.key}.json"
        self._array: np.ndarray | None = None
        self._num_frames: list[int] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(num_clips, target_frames, num_mel_bins)``."""
        return (len(self.paths), self.options.target_frames, self.options.num_mel_bins)

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(path) in self._rows

    def row(self, path: str | os.PathLike[str]) -> int:
        """Row of ``path`` in the array."""
        try:
            return self._rows[os.path.abspath(path)]
        except KeyError:
            raise KeyError(
                f"Audio file {path} is not in the feature cache {self.array_path} "
                f"({len(self.paths)} files)."
            ) from None

    def features(self, path: str | os.PathLike[str]) -> Tensor:
        """Un-normalised, un-augmented fbank of ``path``.

        Shape:
            - Output: ``[target_frames, num_mel_bins]``, float32.

        Raises:
            AudioError: If the stored row is not finite (a damaged cache file).
        """
        return self.read([self.row(path)])[0][0]

    def num_frames(self, path: str | os.PathLike[str]) -> int:
        """Frames of ``path``'s fbank before padding or cropping to ``target_frames``."""
        row = self.row(path)
        _, num_frames = self._open()
        return num_frames[row]

    def read(self, rows: Sequence[int]) -> tuple[Tensor, list[int]]:
        """The fbanks of ``rows`` (see :meth:`row`) in one read, and their frame counts.

        One batch of a DataLoader costs one copy out of the memory map instead of one per clip.

        Shape:
            - Output: ``[len(rows), target_frames, num_mel_bins]``, float32.

        Raises:
            AudioError: If a stored row is not finite (a damaged cache file), naming its file.
        """
        array, num_frames = self._open()
        # A fancy index copies the rows out of the read-only memory map; torch converts float16
        # to float32 about 4 times faster than numpy.
        features = torch.from_numpy(array[np.asarray(rows, dtype=np.intp)]).float()
        # Every row was finite when it was written. A sum is finite when every entry is (and
        # then at a quarter of the time of np.isfinite, 1/30 of torch.isfinite); only when it
        # is not (a non-finite entry, or an overflow of huge ones) are the rows looked at.
        if not math.isfinite(float(features.sum())):
            finite = np.isfinite(features.numpy()).all(axis=(1, 2))
            if not finite.all():
                path = self.paths[rows[int(np.argmin(finite))]]
                raise AudioError(
                    f"The feature cache {self.array_path} holds non-finite values for {path}: "
                    "the file is damaged. Delete it to rebuild the cache."
                )
        return features, [num_frames[row] for row in rows]

    def is_valid(self) -> bool:
        """Whether complete, matching cache files exist (without building them)."""
        return self._load_valid() is not None

    def build(self, force: bool = False) -> None:
        """Builds the cache unless a valid one exists (or ``force``), then opens it.

        Call it once in the main process (``prepare_data``/``setup``) before DataLoader workers
        start; ``ClipDataset`` does so on construction. Concurrent builders of the same key each
        write their own temporary file and the last rename wins, so they are safe but wasteful.

        Raises:
            OSError: With errno ENOSPC (or EDQUOT) if ``cache_dir`` cannot hold the cache,
                naming the folder and the bytes needed.
        """
        if self._array is not None and not force:
            return
        self._array, self._num_frames = None, None
        if self.cache_dir.is_dir():  # the partial files of killed builds, before they count
            remove_stale_temporary_files(self.cache_dir)
        if force or self._load_valid() is None:
            self._build()
        self._open()

    def _compute_key(self) -> str:
        description = {
            "version": CACHE_FORMAT_VERSION,
            "options": dataclasses.asdict(self.options),
            "dtype": self.dtype,
            "files": file_fingerprints(self.paths),
        }
        encoded = json.dumps(description, sort_keys=True).encode("utf-8")
        return hashlib.sha256(encoded).hexdigest()[:20]

    def _open(self) -> tuple[np.ndarray, list[int]]:
        if self._array is None or self._num_frames is None:
            loaded = self._load_valid()
            if loaded is None:
                self._build()
                loaded = self._load_valid()
                if loaded is None:
                    raise RuntimeError(f"Feature cache {self.array_path} is invalid after a build.")
            self._array, self._num_frames = loaded
        return self._array, self._num_frames

    def _load_valid(self) -> tuple[np.ndarray, list[int]] | None:
        """The memory map and frame counts if the files on disk are complete and match."""
        if not self.manifest_path.is_file():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            expected = {
                "key": self.key,
                "shape": list(self.shape),
                "dtype": self.dtype,
                "paths": self.paths,
            }
            for name, value in expected.items():
                if manifest.get(name) != value:
                    raise ValueError(f"manifest field {name!r} does not match")
            num_frames = manifest["num_frames"]
            if len(num_frames) != len(self.paths):
                raise ValueError("manifest field 'num_frames' has the wrong length")
            array = np.load(self.array_path, mmap_mode="r")
            if array.shape != self.shape or array.dtype != np.dtype(self.dtype):
                raise ValueError(f"array has shape {array.shape} and dtype {array.dtype}")
            if array.offset + array.nbytes != os.path.getsize(self.array_path):
                raise ValueError("array file size does not match its header")
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("Feature cache %s is invalid (%s); rebuilding it.", self.array_path, err)
            return None
        return array, [int(n) for n in num_frames]

    def _build(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path.unlink(missing_ok=True)
        header = io.BytesIO()
        descr = npy_format.dtype_to_descr(np.dtype(self.dtype))
        npy_format.write_array_header_1_0(
            header, {"descr": descr, "fortran_order": False, "shape": self.shape}
        )
        size = header.tell() + math.prod(self.shape) * np.dtype(self.dtype).itemsize
        try:
            # Rows are written with write(), not through a memory map: a map written past what
            # the file system holds kills the process with SIGBUS, write() fails with ENOSPC.
            with atomic_path(self.array_path) as tmp, open(tmp, "wb") as stream:
                self._reserve(stream.fileno(), size)
                stream.write(header.getvalue())
                num_frames = []
                for path in _progress(self.paths, self.progress):
                    frames = load_fbank_frames(path, self.options)
                    num_frames.append(frames.shape[0])
                    row = pad_or_crop(frames, self.options.target_frames).numpy()
                    stream.write(row.astype(self.dtype).tobytes())
        except OSError as error:
            if error.errno not in _NO_SPACE:
                raise
            free = shutil.disk_usage(self.cache_dir).free
            raise OSError(
                error.errno,
                f"Not enough space in {self.cache_dir} for the feature cache of {len(self)} "
                f"clips: it needs {size} bytes and {free} are free. "
                "Free some space, or set `cache_dir` to a larger folder or `cache_features` to "
                "false.",
            ) from None
        manifest: dict[str, Any] = {
            "key": self.key,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "options": dataclasses.asdict(self.options),
            "paths": self.paths,
            "num_frames": num_frames,
        }
        write_text_atomic(self.manifest_path, json.dumps(manifest))
        log.info("Built feature cache %s with %d clips.", self.array_path, len(self.paths))
        self._remove_stale(manifest)

    @staticmethod
    def _reserve(fd: int, size: int) -> None:
        """Allocates the file's blocks, so that a full disk fails the build now, not after every
        clip was decoded. Where the file system cannot (or Python lacks posix_fallocate), the
        rows' write() still reports a full disk."""
        if not hasattr(os, "posix_fallocate"):
            return
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as error:
            if error.errno in _NO_SPACE:
                raise
            log.debug("Could not reserve %d bytes for the feature cache (%s)", size, error)

    def _remove_stale(self, manifest: dict[str, Any]) -> None:
        """Deletes the caches of the same files and settings built before the files changed.

        Such a cache differs from this one only in the files' sizes or mtimes, so no key can
        select it again; caches of other settings or file lists are kept (delete ``cache_dir``
        to reclaim them all).
        """
        same = {name: manifest[name] for name in ("shape", "dtype", "options", "paths")}
        same = json.loads(json.dumps(same))  # tuples as lists, as in the stored manifests
        for other in self.cache_dir.glob("fbank-*.json"):
            if other == self.manifest_path:
                continue
            try:
                stored = json.loads(other.read_text(encoding="utf-8"))
                if any(stored.get(name) != value for name, value in same.items()):
                    continue
            except (OSError, ValueError, AttributeError):
                continue
            array = other.with_suffix(".npy")
            size = array.stat().st_size if array.is_file() else 0
            other.unlink(missing_ok=True)  # the manifest first: a half-removed cache is invalid
            array.unlink(missing_ok=True)
            log.info(
                "Removed the stale feature cache %s (%.1f MB): its audio files changed since.",
                array,
                size / 1e6,
            )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = None  # a memmap would pickle as a full in-memory copy
        return state


__all__ = ["CACHE_FORMAT_VERSION", "FeatureCache"]
