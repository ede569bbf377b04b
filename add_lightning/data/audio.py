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
    if not np.isfinite(samples).all():
        raise AudioError(f"Audio file {path} contains non-finite samples (NaN or infinity).")
    return to_mono(torch.from_numpy(samples.T), int(file_rate), sample_rate)


def to_mono(waveform: Tensor | np.ndarray, sample_rate: int, target_rate: int) -> Tensor:
    """A mono float32 waveform at ``target_rate``: channels averaged, then resampled.

    What :func:`load_audio` does to a file's samples, for a waveform already in memory.

    Args:
        waveform: ``[num_samples]`` or ``[channels, num_samples]`` (torchaudio's layout).
        sample_rate: Rate of ``waveform`` in Hz.
        target_rate: Rate of the output in Hz.

    Shape:
        - Output: ``[ceil(num_samples * target_rate / sample_rate)]``.

    Raises:
        ValueError: If the waveform is not 1-D or 2-D, is empty, holds non-finite samples, or
            a rate is not a positive integer.
    """
    check_int("sample_rate", sample_rate)
    check_int("target_rate", target_rate)
    waveform = torch.as_tensor(waveform)
    if waveform.dim() not in (1, 2) or waveform.shape[-1] == 0 or waveform.numel() == 0:
        raise ValueError(
            "Expected argument `waveform` to be [num_samples] or [channels, num_samples] with at "
            f"least one sample but got shape {tuple(waveform.shape)}."
        )
    waveform = waveform.to(torch.float32)
    if waveform.dim() == 2:
        waveform = waveform.mean(dim=0) if waveform.shape[0] > 1 else waveform[0]
    if not torch.isfinite(waveform).all():
        raise ValueError("Expected argument `waveform` to hold finite samples (no NaN or inf).")
    if sample_rate != target_rate:
        waveform = torchaudio.functional.resample(waveform, sample_rate, target_rate)
    return waveform.contiguous()
