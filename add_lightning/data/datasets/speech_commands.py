"""Speech Commands V2 (KS2): 105,829 one-second clips of 35 words with an official split.

Layout (``speech_commands_v0.02.tar.gz`` extracts without a top folder)::

    <word>/<speaker>_nohash_<n>.wav       # one folder per word (class)
    _background_noise_/*.wav              # not a class
    validation_list.txt, testing_list.txt # paths relative to the root, forward slashes

Clips listed in ``validation_list.txt`` / ``testing_list.txt`` form the validation / test
splits, every other clip the training split (84,843 / 9,981 / 11,005 clips). Only paths and
labels are held in memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from add_lightning.data.datasets.base import AudioDatasetIndex, IndexEntry, read_metadata_text
from add_lightning.data.download import download_and_extract

log = logging.getLogger(__name__)

SPEECH_COMMANDS_URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
SPEECH_COMMANDS_SHA256 = "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"
"""SHA-256 of ``speech_commands_v0.02.tar.gz`` as recorded by ``torchaudio.datasets.SPEECHCOMMANDS``
(``_CHECKSUMS``); not re-verified by this project, which had no network access."""

SPEECH_COMMANDS_FOLDER = "speech_commands_v0.02"
VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"

SPEECH_COMMANDS_CLASS_NAMES: tuple[str, ...] = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward",
    "four", "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one",
    "right", "seven", "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow",
    "yes", "zero",
)  # fmt: skip
"""The 35 words of V2, sorted: used before the archive is downloaded."""


def _is_class_folder(entry: os.DirEntry[str]) -> bool:
    # "_background_noise_" (and any other "_"-prefixed or hidden folder) is not a class
    return entry.is_dir() and not entry.name.startswith(("_", "."))


def _iter_wav_names(folder: Path) -> Iterator[str]:
    """The ``.wav`` (any case) file names of ``folder``, without hidden files (``._x``)."""
    with os.scandir(folder) as files:
        for f in files:
            if f.name.lower().endswith(".wav") and not f.name.startswith(".") and f.is_file():
                yield f.name


def _wav_names(folder: Path) -> list[str]:
    """The sorted ``.wav`` file names of ``folder`` (see ``_iter_wav_names``)."""
    return sorted(_iter_wav_names(folder))


def _holds_wav(folder: Path) -> bool:
    """Whether ``folder`` holds a ``.wav`` file; stops at the first (class names stay cheap)."""
    return next(_iter_wav_names(folder), None) is not None


class SpeechCommands(AudioDatasetIndex):
    """Index of Speech Commands V2 with its official train/validation/test split.

    Args:
        root: The extracted folder (holding ``testing_list.txt``) or its parent holding
            ``speech_commands_v0.02/``.
        download: Download and extract the archive into ``root/speech_commands_v0.02`` when the
            data is absent.
        url: Archive address (http, https or file URL).
        sha256: Expected SHA-256 of the archive (default: torchaudio's record for V2); ``None``
            skips the check.
        md5: Expected MD5 of the archive, as an alternative to ``sha256``.
    """

    def __init__(
        self,
        root: str,
        download: bool = False,
        url: str = SPEECH_COMMANDS_URL,
        sha256: str | None = SPEECH_COMMANDS_SHA256,
        md5: str | None = None,
    ) -> None:
        super().__init__(root)
        self.download = download
        self.url = url
        self.sha256 = None if md5 and sha256 == SPEECH_COMMANDS_SHA256 else sha256
        self.md5 = md5

    def data_root(self) -> Path | None:
        """The folder holding ``testing_list.txt``: ``root`` or ``root/speech_commands_v0.02``."""
        for candidate in (self.root, self.root / SPEECH_COMMANDS_FOLDER):
            if (candidate / TESTING_LIST).is_file() and (candidate / VALIDATION_LIST).is_file():
                return candidate
        return None

    def _require_data_root(self) -> Path:
        data_root = self.data_root()
        if data_root is None:
            raise FileNotFoundError(
                f"Speech Commands not found: expected {self.root / TESTING_LIST} and "
                f"{self.root / VALIDATION_LIST} (or the same under "
                f"{self.root / SPEECH_COMMANDS_FOLDER})"
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
                destination=self.root / SPEECH_COMMANDS_FOLDER,
            )
        super().prepare()

    def _read_class_names(self) -> list[str]:
        data_root = self.data_root()
        if data_root is None and self.download:
            return list(SPEECH_COMMANDS_CLASS_NAMES)
        data_root = self._require_data_root()
        with os.scandir(data_root) as entries:
            folders = sorted(entry.name for entry in entries if _is_class_folder(entry))
        words = [word for word in folders if _holds_wav(data_root / word)]
        if len(words) < len(folders):
            log.warning(
                "Speech Commands: the folders %s of %s hold no .wav file and are not classes.",
                sorted(set(folders) - set(words)),
                data_root,
            )
        return words

    def _read_list(self, data_root: Path, name: str) -> set[str]:
        path = data_root / name
        lines = [line.strip().replace("\\", "/") for line in read_metadata_text(path).splitlines()]
        # "./word/x.wav" names the same clip as "word/x.wav"
        return {line[2:] if line.startswith("./") else line for line in lines if line}

    def _read_entries(self) -> list[IndexEntry]:
        data_root = self._require_data_root()
        splits: dict[str, str] = {}
        for split, name in (("validation", VALIDATION_LIST), ("test", TESTING_LIST)):
            for relative in self._read_list(data_root, name):
                if relative in splits:
                    raise ValueError(
                        f"Speech Commands: {relative} is listed in both {VALIDATION_LIST} and "
                        f"{TESTING_LIST} of {data_root}."
                    )
                splits[relative] = split
        entries = []
        for word in self.class_names:
            folder = data_root / word
            for filename in _wav_names(folder):
                relative = f"{word}/{filename}"
                entries.append(
                    IndexEntry(
                        path=folder / filename,
                        label=word,
                        group=splits.pop(relative, "train"),
                        clip_id=relative[: -len(".wav")],
                    )
                )
        if splits:  # listed clips that no class folder holds
            relative, split = sorted(splits.items())[0]
            list_name = VALIDATION_LIST if split == "validation" else TESTING_LIST
            raise FileNotFoundError(
                f"Speech Commands: {data_root / list_name} lists {relative}, but "
                f"{data_root / relative} does not exist ({len(splits)} listed clips missing)."
            )
        log.debug("Read %d Speech Commands clips from %s", len(entries), data_root)
        return entries

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, download={self.download})"
