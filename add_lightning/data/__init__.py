"""Audio data: the data modules and what their YAML names (dataset indexes, features,
augmentation, training batches), the input pipelines that checkpoints store (waveform ->
model input), plus the file-to-fbank functions a user calls.

Everything else (caches, samplers, datasets of clips, downloads, dataset constants) is
imported from the module that defines it, e.g. ``add_lightning.data.sampler``.
"""

from add_lightning.data.audio import load_audio
from add_lightning.data.augment import Mixup, SpecAugment
from add_lightning.data.datamodule import AudioDataModule
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
from add_lightning.data.waveform_datamodule import WaveformDataModule

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
