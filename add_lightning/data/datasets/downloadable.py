"""The shared part of the data sets that ``prepare`` can download (ESC-50, Speech Commands)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from add_lightning.data.datasets.base import AudioDatasetIndex
from add_lightning.data.download import download_and_extract

__all__ = ["DownloadableDataset"]


class DownloadableDataset(AudioDatasetIndex):
    """An index whose data lives in ``root`` or in the extracted archive's folder below it.

    Subclasses name the archive's folder (``archive_folder``), the files whose presence marks
    the data folder (``data_files``, relative to it), the name the errors use (``data_name``;
    the class name when empty), and optionally the archive's file name and the leading path
    components to drop when extracting it.

    Args:
        root: The data folder itself or its parent (which receives the download).
        download: Download and extract the archive into ``root`` when the data is absent.
        url: Archive address (http, https or file URL).
        sha256: Expected SHA-256 of the archive; ``None`` downloads unverified.
        md5: Expected MD5 of the archive, as an alternative to ``sha256``.
        classes: A class subset; ``None`` keeps all.
    """

    archive_folder: ClassVar[str]
    data_files: ClassVar[tuple[str | Path, ...]]
    data_name: ClassVar[str] = ""
    archive_filename: ClassVar[str | None] = None
    strip_components: ClassVar[int] = 0

    def __init__(
        self,
        root: str,
        download: bool = False,
        url: str = "",
        sha256: str | None = None,
        md5: str | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__(root, classes=classes)
        self.download = download
        self.url = url
        self.sha256 = sha256
        self.md5 = md5

    def data_root(self) -> Path | None:
        """The folder holding ``data_files``: ``root`` or ``root/<archive_folder>``, if any."""
        self._require_folder(
            " and ".join(str(name) for name in self.data_files) + f" or {self.archive_folder}/"
        )
        for candidate in (self.root, self.root / self.archive_folder):
            if all((candidate / name).is_file() for name in self.data_files):
                return candidate
        return None

    def _require_data_root(self) -> Path:
        data_root = self.data_root()
        if data_root is None:
            files = " and ".join(str(self.root / name) for name in self.data_files)
            raise FileNotFoundError(
                f"{self.data_name or type(self).__name__} not found: expected {files} (or the "
                f"same under {self.root / self.archive_folder})"
                + ("" if self.root.is_dir() else f"; the folder {self.root} does not exist")
                + ". Set `download=True` or point `root` at the dataset."
            )
        return data_root

    def prepare(self) -> None:
        """Downloads and extracts the archive if needed (``download=True``), then checks it."""
        if self.data_root() is None and self.download:
            download_and_extract(
                self.url,
                self.root,
                sha256=self.sha256,
                md5=self.md5,
                filename=self.archive_filename,
                destination=self.root / self.archive_folder,
                strip_components=self.strip_components,
            )
        super().prepare()

    def _repr_fields(self) -> str:
        """Extra ``, name=value`` fields of ``repr`` after ``root`` and ``download``."""
        return ""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, download={self.download}"
            f"{self._repr_fields()})"
        )
