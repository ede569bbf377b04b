"""The input pipeline: its stored state rebuilds it, and it gives the data module's inputs.

A data module's pipeline goes through a checkpoint (``to_state``, ``torch.save``,
``torch.load(weights_only=True)``, ``InputPipeline.from_state``); the rebuilt pipeline, given
a file's samples as a user has them (stereo, at the file's own rate), must give the model the
input that training gave it for the same file: the evaluation item of the data module.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from add_lightning.checkpoint import PIPELINE_KEY, stored_pipeline
from add_lightning.data import (
    AudioDataModule,
    FbankOptions,
    FbankPipeline,
    FolderDataset,
    InputPipeline,
    Normalization,
    WaveformDataModule,
    WaveformPipeline,
)

FILE_RATE = 22050
FEATURES = FbankOptions(num_mel_bins=32, target_frames=64)  # 0.65 s
# shorter than one window (padded) and longer (cropped in training, several windows here)
SECONDS = [0.3, 0.5, 0.9, 1.2]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes x 4 stereo 16-bit files at 22.05 kHz, seeded noise of a few lengths."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir()
        for index, seconds in enumerate(SECONDS):
            samples = 0.2 * rng.standard_normal((int(seconds * FILE_RATE), 2))
            soundfile.write(root / name / f"{index}.wav", samples, FILE_RATE, subtype="PCM_16")
    return root


def _through_a_checkpoint(pipeline: InputPipeline) -> InputPipeline:
    """``pipeline`` stored as a checkpoint stores it, read back as ``load_trained_model`` does."""
    buffer = io.BytesIO()
    torch.save({PIPELINE_KEY: pipeline.to_state()}, buffer)
    buffer.seek(0)
    restored = stored_pipeline(torch.load(buffer, weights_only=True), "the test's checkpoint")
    assert restored is not None
    return restored


def _file_samples(path: Path) -> torch.Tensor:
    """The file as a user holds it: ``[channels, num_samples]`` at its own rate."""
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    assert rate == FILE_RATE and samples.shape[1] == 2
    return torch.from_numpy(samples.T.copy())


def test_fbank_pipeline_gives_the_training_input_of_each_file(folder):
    data = AudioDataModule(FolderDataset(str(folder), num_folds=2), fold=1, features=FEATURES)
    data.setup("test")
    pipeline = _through_a_checkpoint(data.pipeline)
    assert isinstance(pipeline, FbankPipeline)
    assert pipeline == data.pipeline
    assert (pipeline.features, pipeline.class_names) == (FEATURES, ("cat", "dog"))
    dataset = data.test_dataloader().dataset
    assert len(dataset) == 4
    for index, clip in enumerate(dataset.clips):
        item = dataset[index]
        windows, lengths = pipeline.inputs(_file_samples(clip.path), FILE_RATE)
        # the first window is the training crop; a clip of one window has it alone
        torch.testing.assert_close(windows[0], item["features"], rtol=0, atol=0)
        assert int(lengths[0]) == int(item["num_frames"])
        if int(item["num_frames"]) < FEATURES.target_frames:
            assert len(windows) == 1


def test_waveform_pipeline_gives_the_evaluation_waveform_of_each_file(folder):
    data = WaveformDataModule(FolderDataset(str(folder), num_folds=2), fold=1, max_duration=0.5)
    data.setup("test")
    pipeline = _through_a_checkpoint(data.pipeline)
    assert pipeline == WaveformPipeline(16000, 0.5, ("cat", "dog"))
    dataset = data.test_dataloader().dataset
    for index, clip in enumerate(dataset.clips):
        (window,), (length,) = pipeline.inputs(_file_samples(clip.path), FILE_RATE)
        torch.testing.assert_close(window, dataset[index]["waveform"], rtol=0, atol=0)
        assert int(length) == window.shape[0]


def test_each_data_module_refuses_the_other_kind_of_pipeline(folder):
    index = FolderDataset(str(folder), num_folds=2)
    fbank = FbankPipeline(FEATURES, Normalization(mean=-5.0, std=3.0), ("cat", "dog"))
    with pytest.raises(ValueError, match=r"trained on fbank features .*not waveforms"):
        WaveformDataModule(index, fold=1).use_pipeline(fbank)
    with pytest.raises(ValueError, match="trained on waveform inputs, not fbank features"):
        AudioDataModule(index, fold=1).use_pipeline(WaveformPipeline(16000, None, ("cat", "dog")))
    with pytest.raises(ValueError, match="trained on the classes"):
        AudioDataModule(index, fold=1).use_pipeline(FbankPipeline(FEATURES, fbank.normalization))


@pytest.mark.parametrize(
    "state",
    [
        None,
        [],
        {"kind": "mel"},
        {"kind": "fbank", "features": {}, "class_names": []},
        {"kind": "fbank", "features": {"num_mel_bins": 0}, "normalization": {}},
        {"kind": "waveform", "sample_rate": -1, "class_names": []},
    ],
    ids=["none", "list", "unknown-kind", "no-normalization", "bad-bins", "bad-rate"],
)
def test_a_damaged_state_is_named(state):
    with pytest.raises(ValueError, match=r"input pipeline stored in x\.ckpt is damaged"):
        InputPipeline.from_state(state, "x.ckpt")
