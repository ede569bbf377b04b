"""Waveform mode: variable-length clips as raw waveforms, collated with their padding mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..tensor_utils import padding_mask_from_lengths
from . import audio
from .augment import Mixup, mix_waveforms, mixup_targets
from .clip import Clip
from .clip_dataset import ClipDataset
from .fbank import FbankOptions

__all__ = ["WaveformClipDataset", "collate_waveforms"]


class WaveformClipDataset(ClipDataset):
    """Clips to items ``{"waveform", "target", "clip_id"}`` for encoders that take waveforms.

    Each item is the clip's mono waveform at ``sample_rate``, at its own length (batches are
    padded by :func:`collate_waveforms`). No fbank, no cache, no normalisation here: the
    encoder applies its own input convention (e.g. ``HFAudioEncoder``).

    Training items (``train=True`` only): mixup on waveforms as the authors do (with
    probability ``mixup.rate`` mixed with another random clip, lambda ~ Beta(alpha, alpha),
    the other clip zero-padded or cut to this one's length, soft targets), then a random crop of
    ``max_samples`` when the clip is longer. Evaluation items are whole and unaugmented.
    Randomness as in :class:`ClipDataset`: a function of (seed, epoch, index) alone.

    Args:
        clips: The clips.
        num_classes: Number of classes C.
        sample_rate: Rate the waveforms are read (resampled) at.
        max_samples: Longest training waveform (random crop); None keeps whole clips.
        train: Whether to augment and crop.
        mixup: The mixup (rate and alpha), used when ``train``; None mixes nothing.
        seed: Seed (>= 0) of the augmentation and the crops.

    Shape:
        - waveform: ``[num_samples]``, float32 (``num_samples <= max_samples`` when training)
        - target: ``[]`` int64, or ``[num_classes]`` float32 with mixup
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        num_classes: int,
        sample_rate: int = 16000,
        max_samples: int | None = None,
        train: bool = False,
        mixup: Mixup | None = None,
        seed: int = 0,
    ) -> None:
        if max_samples is not None and (
            isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
        ):
            raise ValueError(
                f"Expected argument `max_samples` to be None or an integer >= 1 but got "
                f"{max_samples!r}."
            )
        features = FbankOptions(sample_rate=sample_rate)  # only its sample_rate is used
        super().__init__(clips, num_classes, features, None, train, mixup=mixup, seed=seed)
        self.sample_rate = sample_rate
        self.max_samples = max_samples

    def raw_features(self, index: int) -> Tensor:
        """The whole waveform of clip ``index``. Shape: ``[num_samples]``."""
        return audio.load_audio(self.clips[index].path, self.sample_rate)

    def __getitem__(self, index: int) -> dict[str, object]:
        clip = self.clips[index]
        waveform = self.raw_features(index)
        if not self.train:
            target = torch.tensor(clip.label, dtype=torch.int64)
            return {"waveform": waveform, "target": target, "clip_id": clip.clip_id}
        generator = self._generator(index)
        mix = self.soft_targets and float(torch.rand((), generator=generator)) < self.mixup.rate
        if mix:
            # another clip, uniformly among the len - 1 others
            other_index = int(torch.randint(len(self.clips) - 1, (), generator=generator))
            other_index += other_index >= index
            other = self.clips[other_index]
            lam = self.mixup.sample_lambda(generator)
            waveform = mix_waveforms(waveform, self.raw_features(other_index), lam)
            target = mixup_targets(clip.label, other.label, lam, self.num_classes)
        elif self.soft_targets:
            target = mixup_targets(clip.label, clip.label, 1.0, self.num_classes)
        else:
            target = torch.tensor(clip.label, dtype=torch.int64)
        if self.max_samples is not None and waveform.shape[0] > self.max_samples:
            starts = waveform.shape[0] - self.max_samples + 1
            start = int(torch.randint(starts, (), generator=generator))
            waveform = waveform[start : start + self.max_samples]
        return {"waveform": waveform, "target": target, "clip_id": clip.clip_id}


def collate_waveforms(items: Sequence[dict[str, object]]) -> dict[str, object]:
    """Zero-pads waveforms to the longest of the batch and records where the padding is.

    Returns:
        ``{"features": [B, N] float32, "padding_mask": [B, N] bool (True = padding),
        "lengths": [B] int64, "target": [B] or [B, C], "clip_id": list[str]}``, with ``N`` the
        longest waveform; ``padding_mask`` follows the convention of ``BEATsBackbone``.
    """
    if not items:
        raise ValueError("Expected at least one item to collate but got none.")
    waveforms = [item["waveform"] for item in items]
    lengths = torch.tensor([w.shape[0] for w in waveforms], dtype=torch.int64)
    features = torch.nn.utils.rnn.pad_sequence(waveforms, batch_first=True)
    padding_mask = padding_mask_from_lengths(lengths, features.shape[1])
    return {
        "features": features,
        "padding_mask": padding_mask,
        "lengths": lengths,
        "target": torch.stack([item["target"] for item in items]),
        "clip_id": [item["clip_id"] for item in items],
    }
