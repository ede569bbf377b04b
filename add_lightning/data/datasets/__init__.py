"""Dataset indexes: metadata (paths, labels, folds or splits) of each supported dataset."""

from add_lightning.data.datasets.base import SPLITS, AudioDatasetIndex, IndexEntry, Split
from add_lightning.data.datasets.esc50 import ESC10_CLASS_NAMES, ESC50, ESC50_CLASS_NAMES, ESC50_URL
from add_lightning.data.datasets.folder import AUDIO_EXTENSIONS, FolderDataset
from add_lightning.data.datasets.huggingface import HuggingFaceDataset
from add_lightning.data.datasets.iemocap import AUTHORS_LABELS, IEMOCAP, SUPERB_LABELS
from add_lightning.data.datasets.speech_commands import (
    SPEECH_COMMANDS_CLASS_NAMES,
    SPEECH_COMMANDS_SHA256,
    SPEECH_COMMANDS_URL,
    V2_12_KEYWORDS,
    SpeechCommands,
)
from add_lightning.data.datasets.synthetic import (
    SYNTHETIC_FAMILIES,
    SyntheticDataset,
    synthesize_clip,
    synthetic_class_names,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "AUTHORS_LABELS",
    "ESC10_CLASS_NAMES",
    "ESC50",
    "ESC50_CLASS_NAMES",
    "ESC50_URL",
    "IEMOCAP",
    "SPEECH_COMMANDS_CLASS_NAMES",
    "SPEECH_COMMANDS_SHA256",
    "SPEECH_COMMANDS_URL",
    "SPLITS",
    "SUPERB_LABELS",
    "SYNTHETIC_FAMILIES",
    "V2_12_KEYWORDS",
    "AudioDatasetIndex",
    "FolderDataset",
    "HuggingFaceDataset",
    "IndexEntry",
    "SpeechCommands",
    "Split",
    "SyntheticDataset",
    "synthesize_clip",
    "synthetic_class_names",
]
