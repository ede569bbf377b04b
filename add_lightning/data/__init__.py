"""Audio data: the data modules and what their YAML names (dataset indexes, features,
augmentation, training batches), the input pipelines that checkpoints store (waveform ->
model input), plus the file-to-fbank functions a user calls.

Everything else (caches, samplers, datasets of clips, downloads, dataset constants) is
imported from the module that defines it, e.g. ``add_lightning.data.sampler``.

The data modules (Lightning) are imported on first use: a DataLoader worker that a fork server
or ``spawn`` starts imports this package to unpickle its dataset, and Lightning would triple
that start (about 4.5 s instead of 1.5 s here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from add_lightning.data.audio import load_audio
from add_lightning.data.augment import Mixup, SpecAugment
from add_lightning.data.datasets import (
    ESC50,
    IEMOCAP,
    AudioDatasetIndex,
    FolderDataset,
    HuggingFaceDataset,
    SpeechCommands,
    SyntheticDataset,
)
from add_lightning.data.fbank import FbankOptions, compute_fbank
from add_lightning.data.normalization import Normalization
from add_lightning.data.pipeline import FbankPipeline, InputPipeline, WaveformPipeline
from add_lightning.data.sampler import ClassBalancedBatches
from add_lightning.lazy_imports import lazy_attributes

__all__ = [
    "ESC50",
    "IEMOCAP",
    "AudioDataModule",
    "AudioDatasetIndex",
    "ClassBalancedBatches",
    "FbankOptions",
    "FbankPipeline",
    "FolderDataset",
    "HuggingFaceDataset",
    "InputPipeline",
    "Mixup",
    "Normalization",
    "SpecAugment",
    "SpeechCommands",
    "SyntheticDataset",
    "WaveformDataModule",
    "WaveformPipeline",
    "compute_fbank",
    "load_audio",
]

if TYPE_CHECKING:
    from add_lightning.data.datamodule import AudioDataModule
    from add_lightning.data.waveform_datamodule import WaveformDataModule

_DATA_MODULES = {
    "AudioDataModule": "add_lightning.data.datamodule",
    "WaveformDataModule": "add_lightning.data.waveform_datamodule",
}

__getattr__ = lazy_attributes(__name__, _DATA_MODULES)
