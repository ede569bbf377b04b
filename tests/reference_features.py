"""Kaldi fbank features restated with torchaudio, without the package's features code."""

from __future__ import annotations

from pathlib import Path

import soundfile
import torch
import torchaudio

from add_lightning.data import FbankOptions

__all__ = ["reference_fbank"]


def reference_fbank(
    path: Path, options: FbankOptions, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Kaldi fbank of the mean-removed clip at ``path``, zero-padded or cut to
    ``options.target_frames`` frames; computed in float32, returned in ``dtype``.

    Shape:
        - output: ``[target_frames, num_mel_bins]``
    """
    samples, rate = soundfile.read(path, dtype="float32")
    waveform = torch.from_numpy(samples - samples.mean())[None]
    fbank = torchaudio.compliance.kaldi.fbank(
        waveform,
        sample_frequency=rate,
        num_mel_bins=options.num_mel_bins,
        frame_length=options.frame_length_ms,
        frame_shift=options.frame_shift_ms,
        window_type=options.window_type,
        dither=0.0,
        htk_compat=True,
        use_energy=False,
    ).to(dtype)
    padded = torch.zeros(options.target_frames, options.num_mel_bins, dtype=dtype)
    frames = min(len(fbank), options.target_frames)
    padded[:frames] = fbank[:frames]
    return padded
