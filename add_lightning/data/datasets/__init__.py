"""Dataset indexes: metadata (paths, labels, folds or splits) of each supported dataset.

The classes a config names (``class_path: add_lightning.data.ESC50``, or this package's
path); constants such as class names and URLs live in the module of their dataset.
"""

from add_lightning.data.datasets.base import AudioDatasetIndex
from add_lightning.data.datasets.esc50 import ESC50
from add_lightning.data.datasets.folder import FolderDataset
from add_lightning.data.datasets.huggingface import HuggingFaceDataset
from add_lightning.data.datasets.iemocap import IEMOCAP
from add_lightning.data.datasets.speech_commands import SpeechCommands
from add_lightning.data.datasets.synthetic import SyntheticDataset

__all__ = [
    "ESC50",
    "IEMOCAP",
    "AudioDatasetIndex",
    "FolderDataset",
    "HuggingFaceDataset",
    "SpeechCommands",
    "SyntheticDataset",
]
