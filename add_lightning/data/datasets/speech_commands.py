"""Speech Commands V2 (KS2): 105,829 one-second clips of 35 words with an official split.

Layout (``speech_commands_v0.02.tar.gz`` extracts without a top folder)::

    <word>/<speaker>_nohash_<n>.wav       # one folder per word (class)
    _background_noise_/*.wav              # not a class
    validation_list.txt, testing_list.txt # paths relative to the root, forward slashes

Clips listed in ``validation_list.txt`` / ``testing_list.txt`` form the validation / test
splits, every other clip the training split (84,843 / 9,981 / 11,005 clips). Only paths and
labels are held in memory.

Two protocols (``protocol``):

- ``"v2-35"`` (the default, the paper's KS2): the 35 words are the classes.
- ``"v2-12"``: the 12-class protocol of the keyword-spotting literature, as defined by
  TensorFlow's ``tensorflow/examples/speech_commands/input_data.py``
  (``prepare_data_index``, ``silence_percentage=10``, ``unknown_percentage=10``) and used by
  Google's companion test set ``speech_commands_test_set_v0.02`` and Hugging Face's
  ``speech_commands`` v0.02 (``is_unknown``): the 10 words yes, no, up, down, left, right, on,
  off, stop, go, plus ``_unknown_`` and ``_silence_``. The rules followed here, per split of the
  official lists, where K is the split's number of clips of the 10 words:

  * ``_unknown_``: ``ceil(unknown_fraction * K)`` clips (TF: ``ceil(set_size * 10 / 100)``)
    drawn without replacement from the split's clips of the other words (25 in V2), sorted by
    path and shuffled with ``numpy.random.default_rng([seed, s])`` (s = 0, 1, 2 for train,
    validation, test); the first ones are kept, the rest of those words is not used.
  * ``_silence_``: ``ceil(silence_fraction * K)`` one-second clips cut from the
    ``_background_noise_`` recordings. TF feeds all-zero clips plus random background noise
    instead; here the clips are the recordings as they are (no volume scaling, no mixing).
    Each recording (sorted by name) is divided in time into its first 80 %, next 10 % and last
    10 %, which only the train, validation and test clips cut from it respectively, so no split
    shares noise audio with another. Clip k of a split comes from recording ``k mod R`` (of the
    R recordings whose part for that split lasts at least one second); the m clips a recording
    gives a split start at evenly spaced positions of its part (first at its start, last ending
    at its end; they overlap when m seconds exceed the part). No randomness is involved.
    The clips are written once as WAV files (same rate and sample format as the recording)
    under ``silence_dir`` (default ``<data folder>/_silence_cut_``), each under a temporary
    name then renamed, and rewritten when the recording is newer.

  On the full V2 this gives 30,769 + 3,077 + 3,077 = 36,923 training clips and
  4,074 + 408 + 408 = 4,890 test clips, the counts reported in the literature (the test split
  has the size of Google's v0.02 test set); they were not re-counted on the real archive here.

A ``classes`` subset then keeps some of the classes (of either protocol).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile

from add_lightning.atomic import atomic_path
from add_lightning.data.datasets.base import (
    SPLITS,
    IndexEntry,
    read_metadata_text,
)
from add_lightning.data.datasets.downloadable import DownloadableDataset

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

V2_12_KEYWORDS: tuple[str, ...] = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
)  # fmt: skip
"""The 10 command words of the 12-class protocol (in the order of TF's ``wanted_words``)."""
UNKNOWN_LABEL = "_unknown_"
SILENCE_LABEL = "_silence_"
BACKGROUND_NOISE_FOLDER = "_background_noise_"
SILENCE_FOLDER = "_silence_cut_"
SILENCE_SPLIT_PARTS = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}
"""The part (start, end as fractions of its length) of each noise recording a split cuts from."""
PROTOCOLS = ("v2-35", "v2-12")


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


class SpeechCommands(DownloadableDataset):
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
        protocol: ``"v2-35"`` (35 words) or ``"v2-12"`` (10 words, ``_unknown_``,
            ``_silence_``; rules in the module docstring).
        classes: A class subset of the protocol's classes; ``None`` keeps all.
        unknown_fraction: ``v2-12``: ``_unknown_`` clips per split, as a fraction of its
            keyword clips (TF's ``unknown_percentage`` / 100).
        silence_fraction: ``v2-12``: ``_silence_`` clips per split, as a fraction of its
            keyword clips (TF's ``silence_percentage`` / 100).
        silence_dir: ``v2-12``: folder receiving the cut silence clips; default
            ``<data folder>/_silence_cut_`` (set it when the dataset folder is read-only).
        seed: ``v2-12``: seed of the ``_unknown_`` draw.
    """

    archive_folder = SPEECH_COMMANDS_FOLDER
    data_files = (TESTING_LIST, VALIDATION_LIST)
    data_name = "Speech Commands"

    def __init__(
        self,
        root: str,
        download: bool = False,
        url: str = SPEECH_COMMANDS_URL,
        sha256: str | None = SPEECH_COMMANDS_SHA256,
        md5: str | None = None,
        protocol: Literal["v2-35", "v2-12"] = "v2-35",
        classes: Sequence[str] | None = None,
        unknown_fraction: float = 0.1,
        silence_fraction: float = 0.1,
        silence_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"Expected argument `protocol` to be one of {list(PROTOCOLS)} but got {protocol!r}."
            )
        for name, value in (
            ("unknown_fraction", unknown_fraction),
            ("silence_fraction", silence_fraction),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value:
                raise ValueError(
                    f"Expected argument `{name}` to be a number >= 0 but got {value!r}."
                )
        sha256 = None if md5 and sha256 == SPEECH_COMMANDS_SHA256 else sha256
        super().__init__(root, download, url, sha256, md5, classes)
        self.protocol = protocol
        self.unknown_fraction = float(unknown_fraction)
        self.silence_fraction = float(silence_fraction)
        self.silence_dir = None if silence_dir is None else Path(silence_dir).expanduser()
        self.seed = seed

    def _read_class_names(self) -> list[str]:
        if self.protocol == "v2-12":
            return sorted((*V2_12_KEYWORDS, UNKNOWN_LABEL, SILENCE_LABEL))
        data_root = self.data_root()
        if data_root is None and self.download:
            return list(SPEECH_COMMANDS_CLASS_NAMES)
        return self._words()

    def _words(self) -> list[str]:
        """The word folders of the data that hold a ``.wav`` file, sorted."""
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
        for word in self._words() if self.protocol == "v2-12" else self.all_class_names:
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
        if self.protocol == "v2-12":
            entries = self._v2_12_entries(data_root, entries)
        return entries

    def _v2_12_entries(self, data_root: Path, words: list[IndexEntry]) -> list[IndexEntry]:
        """The 10 keywords, the drawn ``_unknown_`` clips and the cut ``_silence_`` clips."""
        found = {entry.label for entry in words}
        missing = [word for word in V2_12_KEYWORDS if word not in found]
        if missing:
            raise FileNotFoundError(
                f"Speech Commands at {data_root}: the 12-class protocol needs the word folders "
                f"{list(V2_12_KEYWORDS)} but {missing} are missing."
            )
        entries: list[IndexEntry] = []
        counts = {}
        for split_index, split in enumerate(SPLITS):
            keywords = [e for e in words if e.group == split and e.label in V2_12_KEYWORDS]
            others = sorted(
                (e for e in words if e.group == split and e.label not in V2_12_KEYWORDS),
                key=lambda e: e.clip_id,
            )
            num_unknown = math.ceil(self.unknown_fraction * len(keywords))
            if num_unknown > len(others):
                raise ValueError(
                    f"Speech Commands at {data_root}: the {split} split needs {num_unknown} "
                    f"_unknown_ clips (unknown_fraction={self.unknown_fraction} of "
                    f"{len(keywords)} keyword clips) but has {len(others)} clips of other words."
                )
            rng = np.random.default_rng([self.seed, split_index])
            drawn = sorted(rng.permutation(len(others))[:num_unknown].tolist())
            unknown = [others[i]._replace(label=UNKNOWN_LABEL) for i in drawn]
            num_silence = math.ceil(self.silence_fraction * len(keywords))
            silence = self._silence_entries(data_root, split, num_silence)
            entries += keywords + unknown + silence
            counts[split] = (len(keywords), len(unknown), len(silence))
        log.info(
            "Speech Commands V2-12 at %s: (keyword, _unknown_, _silence_) clips per split %s",
            data_root,
            counts,
        )
        return entries

    def _silence_entries(self, data_root: Path, split: str, count: int) -> list[IndexEntry]:
        """``count`` one-second clips of background noise for ``split`` (rules: module doc)."""
        if count == 0:
            return []
        noise_folder = data_root / BACKGROUND_NOISE_FOLDER
        names = _wav_names(noise_folder) if noise_folder.is_dir() else []
        first, last = SILENCE_SPLIT_PARTS[split]
        parts = []  # (recording, info, start sample, end sample) of the split's part
        for name in names:
            info = soundfile.info(str(noise_folder / name))
            start, end = round(first * info.frames), round(last * info.frames)
            if end - start >= info.samplerate:
                parts.append((noise_folder / name, info, start, end))
        if not parts:
            raise FileNotFoundError(
                f"Speech Commands at {data_root}: the 12-class protocol cuts its _silence_ "
                f"clips from {noise_folder}/*.wav, but no recording there has at least one "
                f"second in the {split} part ({first:.0%}-{last:.0%} of its length)."
            )
        folder = self.silence_dir or data_root / SILENCE_FOLDER
        entries = []
        for p, (recording, info, start, end) in enumerate(parts):
            num = len(range(p, count, len(parts)))  # clips k = p, p + R, ... of this recording
            width = info.samplerate
            span = end - start - width
            if num > span + 1:  # fewer distinct start samples than clips
                raise ValueError(
                    f"Speech Commands: {num} distinct one-second _silence_ clips cannot be cut "
                    f"from the {split} part of {recording} ({end - start} samples); lower "
                    "`silence_fraction`."
                )
            offsets = [start + (round(j * span / (num - 1)) if num > 1 else 0) for j in range(num)]
            paths = [folder / recording.stem / f"{offset:09d}.wav" for offset in offsets]
            _write_segments(recording, info, start, end, offsets, width, paths)
            for offset, path in zip(offsets, paths):
                entries.append(
                    IndexEntry(
                        path=path,
                        label=SILENCE_LABEL,
                        group=split,
                        clip_id=f"{SILENCE_LABEL}/{recording.stem}_{offset:09d}",
                    )
                )
        return entries

    def _repr_fields(self) -> str:
        return f", protocol={self.protocol!r}"


def _write_segments(
    recording: Path,
    info: soundfile._SoundFileInfo,
    start: int,
    end: int,
    offsets: list[int],
    frames: int,
    paths: list[Path],
) -> None:
    """Writes ``frames`` samples of ``recording`` from each offset to its path (unless current).

    The part ``[start, end)`` of the recording is read once; each clip is written under a
    temporary name, then renamed, in the recording's sample format.
    """
    newer = recording.stat().st_mtime_ns
    missing = [
        (offset, path)
        for offset, path in zip(offsets, paths)
        if not (path.is_file() and path.stat().st_mtime_ns >= newer)
    ]
    if not missing:
        return
    samples, rate = soundfile.read(str(recording), start=start, stop=end, always_2d=True)
    for offset, path in missing:
        with atomic_path(path) as temporary:
            segment = samples[offset - start : offset - start + frames]
            soundfile.write(str(temporary), segment, rate, subtype=info.subtype, format="WAV")
