"""A procedural dataset written in the ESC-50 layout, to try the whole pipeline without downloads.

Each class is one of four sound families at its own centre frequency (log-spaced between
300 Hz and 5 kHz, capped below Nyquist): a harmonic tone, a rising chirp, a band of noise or an
amplitude-modulated tone. Every clip jitters the onset, length, pitch (+-4 %) and level of its
event and adds background noise (10-20 dB SNR), so the classes are clearly distinguishable but
not identical copies. The clips and ``meta/esc50.csv`` are written exactly as ESC-50 is
distributed (``audio/{fold}-{clip_id}-{take}-{target}.wav``) and read by the ``ESC50`` index.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import soundfile

from add_lightning.atomic import atomic_directory
from add_lightning.checks import check_int
from add_lightning.data.datasets.esc50 import ESC50_CSV, ESC50LayoutIndex

log = logging.getLogger(__name__)

SYNTHETIC_FAMILIES = ("tone", "chirp", "noise", "am")
_LOWEST_HZ, _HIGHEST_HZ = 300.0, 5000.0


def synthetic_class_names(num_classes: int) -> list[str]:
    """Names ``"<k>_<family>"`` with zero-padded k, so sorted order is generation order."""
    width = max(2, len(str(num_classes - 1)))
    return [
        f"{k:0{width}d}_{SYNTHETIC_FAMILIES[k % len(SYNTHETIC_FAMILIES)]}"
        for k in range(num_classes)
    ]


def _centre_frequencies(num_classes: int, sample_rate: int) -> np.ndarray:
    highest = min(_HIGHEST_HZ, 0.35 * sample_rate)
    return np.geomspace(_LOWEST_HZ, highest, num_classes) if num_classes > 1 else np.array([1e3])


def synthesize_clip(
    label: int, num_classes: int, duration_s: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """One clip of class ``label``: a jittered event of the class's family plus noise.

    Shape:
        - Output: ``[round(duration_s * sample_rate)]``, float32 in [-1, 1].
    """
    num_samples = round(duration_s * sample_rate)
    frequency = _centre_frequencies(num_classes, sample_rate)[label] * rng.uniform(0.96, 1.04)
    length = int(num_samples * rng.uniform(0.4, 0.7))
    onset = int(rng.integers(0, num_samples - length + 1))
    t = np.arange(length) / sample_rate
    family = SYNTHETIC_FAMILIES[label % len(SYNTHETIC_FAMILIES)]
    if family == "tone":  # fundamental with two decaying harmonics
        event = sum(0.6**h * np.sin(2 * np.pi * (h + 1) * frequency * t) for h in range(3))
    elif family == "chirp":  # exponential sweep from 0.7 f to 1.4 f
        span = length / sample_rate
        event = np.sin(2 * np.pi * 0.7 * frequency * span * (2.0 ** (t / span) - 1) / np.log(2.0))
    elif family == "noise":  # white noise band-passed to f +- 15 %
        spectrum = np.fft.rfft(rng.standard_normal(length))
        bins = np.fft.rfftfreq(length, 1 / sample_rate)
        spectrum[np.abs(bins - frequency) > 0.15 * frequency] = 0
        event = np.fft.irfft(spectrum, n=length)
    else:  # tone amplitude-modulated at 4-12 Hz
        modulation = rng.uniform(4.0, 12.0)
        event = (0.5 + 0.5 * np.sin(2 * np.pi * modulation * t)) * np.sin(2 * np.pi * frequency * t)
    fade = min(length // 2, int(0.01 * sample_rate))
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade)
        event[:fade] *= ramp
        event[-fade:] *= ramp[::-1]
    event *= rng.uniform(0.2, 0.8) / max(np.abs(event).max(), 1e-8)
    clip = np.zeros(num_samples)
    clip[onset : onset + length] = event
    event_power = np.mean(event**2)
    snr_db = rng.uniform(10.0, 20.0)
    clip += rng.standard_normal(num_samples) * np.sqrt(event_power / 10 ** (snr_db / 10))
    return np.clip(clip, -1.0, 1.0).astype(np.float32)


class SyntheticDataset(ESC50LayoutIndex):
    """Generated, learnable audio classes in the ESC-50 layout (folds ``1..num_folds``).

    The data goes to ``root/synthetic-c{C}-n{N}-f{F}-d{duration}-sr{rate}-s{seed}/``, generated
    (in about a second for the defaults) in a temporary folder that is renamed when complete,
    and reused when it already exists.

    Args:
        root: Folder receiving the generated dataset.
        num_classes: Number of classes C (>= 2).
        clips_per_class: Clips per class N (>= num_folds, spread evenly over the folds).
        num_folds: Number of folds F (the ESC-50 protocol has 5).
        duration_s: Clip length in seconds.
        sample_rate: Sample rate of the written files in Hz.
        seed: Seed of every random choice.
        classes: A class subset (names as in ``synthetic_class_names``); ``None`` keeps all.
    """

    def __init__(
        self,
        root: str,
        num_classes: int = 10,
        clips_per_class: int = 40,
        num_folds: int = 5,
        duration_s: float = 1.0,
        sample_rate: int = 16000,
        seed: int = 0,
        classes: list[str] | None = None,
    ) -> None:
        for name, value, lowest in (
            ("num_classes", num_classes, 2),
            ("num_folds", num_folds, 2),
            ("clips_per_class", clips_per_class, num_folds),
            ("sample_rate", sample_rate, 8000),
        ):
            check_int(name, value, minimum=lowest)
        if not 0.1 <= duration_s <= 60:
            raise ValueError(
                "Expected argument `duration_s` to be within [0.1, 60] seconds but got "
                f"{duration_s!r}."
            )
        self.dataset_root = Path(root).expanduser() / (
            f"synthetic-c{num_classes}-n{clips_per_class}-f{num_folds}-d{duration_s:g}"
            f"-sr{sample_rate}-s{seed}"
        )
        super().__init__(str(self.dataset_root), classes=classes)
        self.num_classes_requested = num_classes
        self.clips_per_class = clips_per_class
        self.num_folds = num_folds
        self.duration_s = duration_s
        self.sample_rate = sample_rate
        self.seed = seed

    def _fallback_class_names(self) -> list[str]:
        return synthetic_class_names(self.num_classes_requested)

    def _fallback_folds(self) -> tuple[int, ...]:
        return tuple(range(1, self.num_folds + 1))

    def data_root(self) -> Path | None:
        """The generated folder, once it holds ``meta/esc50.csv``."""
        return self.root if (self.root / ESC50_CSV).is_file() else None

    def _require_data_root(self) -> Path:
        data_root = self.data_root()
        if data_root is None:
            raise FileNotFoundError(
                f"SyntheticDataset metadata not found: expected {self.root / ESC50_CSV}; "
                "`prepare()` generates it."
            )
        return data_root

    def prepare(self) -> None:
        """Generates the dataset unless a complete copy exists, then checks it."""
        if self.data_root() is None:
            self.generate()
        super().prepare()

    def generate(self) -> Path:
        """Writes the clips and metadata into a temporary folder, then renames it into place."""
        if self.data_root() is not None:
            return self.dataset_root
        if self.dataset_root.parent.is_file():
            raise NotADirectoryError(
                f"SyntheticDataset: `root` {self.dataset_root.parent} is a file; expected a "
                "folder to generate the dataset in."
            )
        # another process may finish first: its (identical) copy is kept
        with atomic_directory(
            self.dataset_root, is_complete=lambda _: self.data_root() is not None
        ) as temporary:
            self._write(temporary)
        log.info("Generated the synthetic dataset in %s", self.dataset_root)
        return self.dataset_root

    def _write(self, folder: Path) -> None:
        (folder / "audio").mkdir()
        (folder / "meta").mkdir()
        rng = np.random.default_rng(self.seed)
        names = synthetic_class_names(self.num_classes_requested)
        rows = []
        for label, name in enumerate(names):
            folds = rng.permutation(np.arange(self.clips_per_class) % self.num_folds) + 1
            for index, fold in enumerate(folds):
                source_id = 100000 + label * self.clips_per_class + index
                filename = f"{fold}-{source_id}-A-{label}.wav"
                waveform = synthesize_clip(
                    label, len(names), self.duration_s, self.sample_rate, rng
                )
                soundfile.write(folder / "audio" / filename, waveform, self.sample_rate, "PCM_16")
                rows.append((filename, int(fold), label, name, False, source_id, "A"))
        rows.sort()
        with open(folder / "meta" / "esc50.csv", "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(("filename", "fold", "target", "category", "esc10", "src_file", "take"))
            writer.writerows(rows)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.dataset_root.parent)!r}, "
            f"num_classes={self.num_classes_requested}, clips_per_class={self.clips_per_class}, "
            f"num_folds={self.num_folds}, duration_s={self.duration_s}, "
            f"sample_rate={self.sample_rate}, seed={self.seed})"
        )
