"""Reading audio files into mono float32 waveforms at a fixed sample rate."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional
from torch import Tensor

from add_lightning.checks import check_int


class AudioError(ValueError):
    """An audio file is missing, unreadable, corrupt or empty. The message names the file."""


def load_audio(path: str | os.PathLike[str], sample_rate: int = 16000) -> Tensor:
    """Reads an audio file (any format libsndfile reads: wav, flac, ogg, ...) as a mono waveform.

    Channels are averaged; a file whose rate differs from ``sample_rate`` is resampled with
    ``torchaudio.functional.resample`` (band-limited sinc interpolation, output length
    ``ceil(num_samples * sample_rate / file_rate)``).

    Args:
        path: The audio file.
        sample_rate: The rate of the returned waveform in Hz.

    Returns:
        The waveform, float32, nominally in [-1, 1] for integer PCM files.

    Shape:
        - Output: ``[num_samples]``.

    Raises:
        AudioError: If the file does not exist, cannot be decoded, holds no samples or holds
            non-finite samples.
        ValueError: If ``sample_rate`` is not a positive integer.
    """
    check_int("sample_rate", sample_rate)
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"Audio file {path} does not exist (or is not a regular file).")
    try:
        samples, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(f"Could not decode audio file {path}: {err}") from err
    if samples.shape[0] == 0:
        raise AudioError(f"Audio file {path} contains no samples (expected at least one).")
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if not np.isfinite(mono).all():
        raise AudioError(f"Audio file {path} contains non-finite samples (NaN or infinity).")
    waveform = torch.from_numpy(np.ascontiguousarray(mono))
    if file_rate != sample_rate:
        waveform = torchaudio.functional.resample(waveform, int(file_rate), sample_rate)
    return waveform
