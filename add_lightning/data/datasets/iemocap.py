"""IEMOCAP emotion recognition (ER): 4 classes, leave-one-session-out, two label sets.

Layout of the release (``IEMOCAP_full_release/``)::

    SessionN/sentences/wav/<dialog>/<utterance>.wav
    SessionN/dialog/EmoEvaluation/<dialog>.txt

Only the category lines of an EmoEvaluation file are read::

    [<start> - <end>]<TAB><utterance><TAB><label><TAB>[<V>, <A>, <D>]

(headers, annotator lines such as ``C-E1:`` and the ``Attribute/``, ``Categorical/`` and
``Self-evaluation/`` sub-folders are ignored). Tabs or spaces separate the fields, labels are
compared in lower case and files may be UTF-8 or UTF-16 (with a byte-order mark); a line that
names an utterance but cannot be read as a category line is logged (a WARNING with the count
and the first such line), never dropped silently. Fold k tests on Session k and trains on the
other sessions.

Label sets (``label_set``), both with the classes ``ang``, ``hap``, ``neu``, ``sad``:

- ``"superb"`` (the default, the paper's protocol): keeps ``neu``, ``hap``, ``ang``, ``sad`` and
  ``exc``, maps ``exc`` to ``hap``; 5,531 utterances in the full release (neu 1,708,
  hap+exc 1,636, ang 1,103, sad 1,084).
- ``"authors"`` (the authors' public code): keeps ``neu``, ``hap``, ``ang``, ``sad`` and drops
  ``exc``; 4,490 utterances in the full release (hap 595, the others as above).

Every other label (``fru``, ``sur``, ``xxx``, ...) is dropped: such utterances are left out
of the index, not reported as errors, and the dropped counts are logged.
"""

from __future__ import annotations

import codecs
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from add_lightning.data.datasets.base import AudioDatasetIndex, IndexEntry

log = logging.getLogger(__name__)

IEMOCAP_FOLDER = "IEMOCAP_full_release"
SUPERB_LABELS = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
"""The SUPERB protocol: kept labels and the class each maps to (``exc`` merged into ``hap``)."""
AUTHORS_LABELS = {"neu": "neu", "hap": "hap", "ang": "ang", "sad": "sad"}
"""The authors' public code: the four labels kept as they are, ``exc`` dropped."""
IEMOCAP_LABEL_SETS = {"superb": SUPERB_LABELS, "authors": AUTHORS_LABELS}

_SESSION = re.compile(r"^Session(\d+)$")
# "[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]", with tabs
# or spaces (files re-saved by editors lose their tabs), a bracket of the times may be missing,
# and the [V, A, D] part is optional.
_NUMBER = r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?"
_CATEGORY_LINE = re.compile(
    rf"^\[?\s*{_NUMBER}\s*-\s*{_NUMBER}\s*\]?\s*(?P<utterance>Ses\S+)\s+(?P<label>[A-Za-z]+)"
    r"(?:\s+\[?[-+\d.eE,\s]*\]?)?$"
)
# Of the lines of an EmoEvaluation file only the category lines name an utterance: any other
# line that does is a damaged category line.
_UTTERANCE = re.compile(r"Ses\d\d[FM]_\S+")


def _read_label_file(path: Path) -> str:
    """The text of an EmoEvaluation file: UTF-8, or UTF-16 / UTF-8 with a byte-order mark."""
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="replace")


class IEMOCAP(AudioDatasetIndex):
    """Index of IEMOCAP with 4 classes, leave-one-session-out (see the module for the label sets).

    The data is licensed per user by USC and cannot be downloaded automatically.

    Args:
        root: The release folder holding ``Session1`` ... ``Session5``, or its parent holding
            ``IEMOCAP_full_release/``.
        label_set: ``"superb"`` (``exc`` merged into ``hap``, the paper's protocol) or
            ``"authors"`` (``exc`` dropped, as the authors' public code does).
        classes: A subset of ``ang``, ``hap``, ``neu``, ``sad``; ``None`` keeps all four.
    """

    def __init__(
        self,
        root: str,
        label_set: Literal["superb", "authors"] = "superb",
        classes: Sequence[str] | None = None,
    ) -> None:
        if label_set not in IEMOCAP_LABEL_SETS:
            raise ValueError(
                f"Expected argument `label_set` to be one of {sorted(IEMOCAP_LABEL_SETS)} but got "
                f"{label_set!r}."
            )
        super().__init__(root, classes=classes)
        self.label_set = label_set
        self.labels = IEMOCAP_LABEL_SETS[label_set]

    def data_root(self) -> Path | None:
        """The folder holding ``SessionN/``: ``root`` or ``root/IEMOCAP_full_release``, if any."""
        self._require_folder(f"Session1 ... Session5 or {IEMOCAP_FOLDER}/")
        for candidate in (self.root, self.root / IEMOCAP_FOLDER):
            if candidate.is_dir() and self._sessions(candidate):
                return candidate
        return None

    @staticmethod
    def _sessions(folder: Path) -> dict[int, Path]:
        """The session folders by number.

        Raises:
            ValueError: If two folders have one number (``Session2`` and ``Session02``): one
                of them would be left out of every fold.
        """
        sessions: dict[int, Path] = {}
        for child in sorted(folder.iterdir()):
            match = _SESSION.match(child.name)
            if match and child.is_dir():
                number = int(match.group(1))
                if number in sessions:
                    raise ValueError(
                        f"IEMOCAP: {sessions[number]} and {child} are both session {number}; "
                        "expected one folder per session (remove or rename one of them)."
                    )
                sessions[number] = child
        return sessions

    def _require_sessions(self) -> dict[int, Path]:
        data_root = self.data_root()
        if data_root is None:
            raise FileNotFoundError(
                f"IEMOCAP not found: expected folders Session1 ... Session5 in {self.root} or "
                f"{self.root / IEMOCAP_FOLDER}"
                + ("" if self.root.is_dir() else f" (the folder {self.root} does not exist)")
                + ". IEMOCAP must be obtained from USC (sail.usc.edu/iemocap) and extracted there."
            )
        return self._sessions(data_root)

    def _read_class_names(self) -> list[str]:
        return sorted(set(self.labels.values()))

    def _read_folds(self) -> tuple[int, ...]:
        return tuple(sorted(self._require_sessions()))

    def _read_entries(self) -> list[IndexEntry]:
        entries: list[IndexEntry] = []
        dropped: Counter[str] = Counter()
        unreadable: list[tuple[Path, int, str]] = []  # (file, line number, line)
        for session_number, session in sorted(self._require_sessions().items()):
            evaluation = session / "dialog" / "EmoEvaluation"
            label_files = sorted(
                p for p in evaluation.glob("*.txt") if p.is_file() and not p.name.startswith(".")
            )
            if not label_files:
                raise FileNotFoundError(
                    f"IEMOCAP: no label files {evaluation}/<dialog>.txt in {session}."
                )
            for label_file in label_files:
                wav_folder = session / "sentences" / "wav" / label_file.stem
                text = _read_label_file(label_file)
                for number, line in enumerate(text.splitlines(), start=1):
                    match = _CATEGORY_LINE.match(line.strip())
                    if match is None:
                        if _UTTERANCE.search(line):
                            unreadable.append((label_file, number, line.strip()))
                        continue
                    utterance, label = match.group("utterance"), match.group("label").lower()
                    if any(part in utterance for part in ("/", "\\", "..")):
                        # ids are names: "Ses01F_x/../../../../Session2/..." would put another
                        # session's clip into this session's fold
                        raise ValueError(
                            f"IEMOCAP: {label_file} line {number}: the utterance id "
                            f"{utterance!r} is a path; expected a name such as "
                            "Ses01F_impro01_F000."
                        )
                    if label not in self.labels:
                        dropped[label] += 1
                        continue
                    path = wav_folder / f"{utterance}.wav"
                    if not path.is_file():
                        raise FileNotFoundError(
                            f"IEMOCAP: {label_file} labels utterance {utterance!r}, but its "
                            f"audio {path} does not exist."
                        )
                    entries.append(
                        IndexEntry(
                            path=path,
                            label=self.labels[label],
                            group=session_number,
                            clip_id=utterance,
                        )
                    )
        if unreadable:
            path, number, line = unreadable[0]
            log.warning(
                "IEMOCAP: %d lines that name an utterance are not category lines "
                "'[start - end] utterance label [V, A, D]' and were not used; the first: %s "
                "line %d: %r",
                len(unreadable),
                path,
                number,
                line,
            )
        counts = Counter(entry.label for entry in entries)
        log.info(
            "IEMOCAP: %d utterances kept %s; dropped (not in the %r label set) %s",
            len(entries),
            dict(sorted(counts.items())),
            self.label_set,
            dict(sorted(dropped.items())),
        )
        return entries

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, label_set={self.label_set!r})"
