"""Training augmentation: SpecAugment masks and mixup, as in the AST recipe the paper follows.

``SpecAugment`` and ``Mixup`` are what a data module's ``spec_augment`` and ``mixup`` take
(``class_path`` in YAML); the functions below are the arithmetic of mixing.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchaudio.transforms
from torch import Tensor, nn

from add_lightning.checks import check_int

_LOG_POWER_FLOOR = math.log(torch.finfo(torch.float32).eps)  # Kaldi floors mel power at eps


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al., 2019) with torchaudio's masking transforms.

    One frequency band of width ``U[0, freq_mask)`` bins and one time span of width
    ``U[0, time_mask)`` frames are set to ``mask_value``, independently per example of a batch.
    AST masks the un-normalised log-mel fbank with 0 before normalising; ``ClipDataset`` does the
    same. A width of 0 disables that mask.

    Args:
        freq_mask: Largest frequency mask width in bins (AST's ``freqm``).
        time_mask: Largest time mask width in frames (AST's ``timem``).
        mask_value: Value written into the masked cells.

    Shape:
        - features: ``[T, F]`` or ``[B, T, F]``.
        - Output: same as the input.
    """

    def __init__(self, freq_mask: int = 0, time_mask: int = 0, mask_value: float = 0.0) -> None:
        super().__init__()
        check_int("freq_mask", freq_mask, minimum=0)
        check_int("time_mask", time_mask, minimum=0)
        self.freq_mask = freq_mask
        self.time_mask = time_mask
        self.mask_value = mask_value
        # torchaudio masks (..., freq, time) inputs; iid_masks draws one mask per batch element.
        masks = []
        if freq_mask > 0:
            masks.append(torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True))
        if time_mask > 0:
            masks.append(torchaudio.transforms.TimeMasking(time_mask, iid_masks=True))
        self.masks = nn.ModuleList(masks)

    def forward(self, features: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Masks ``features``; with a ``generator`` the masks are a function of its state alone.

        torchaudio draws from the global torch RNG, so with a generator the global RNG is forked,
        seeded from the generator, and restored afterwards.
        """
        if features.dim() not in (2, 3):
            raise ValueError(
                "Expected argument `features` to have shape [T, F] or [B, T, F] but got "
                f"{tuple(features.shape)}."
            )
        if not self.masks:
            return features
        batch = features if features.dim() == 3 else features.unsqueeze(0)
        specgram = batch.transpose(1, 2)  # [B, F, T] as torchaudio expects
        if generator is None:
            specgram = self._mask(specgram)
        else:
            seed = int(torch.randint(2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                specgram = self._mask(specgram)
        masked = specgram.transpose(1, 2)
        return masked if features.dim() == 3 else masked.squeeze(0)

    def _mask(self, specgram: Tensor) -> Tensor:
        for mask in self.masks:
            specgram = mask(specgram, self.mask_value)
        return specgram

    def extra_repr(self) -> str:
        return f"freq_mask={self.freq_mask}, time_mask={self.time_mask}"


class Mixup:
    """Mixup of training clips, as the authors do: with probability ``rate`` a clip is mixed
    with another random clip of the training set, ``lam * a + (1 - lam) * b`` with
    ``lam ~ Beta(alpha, alpha)``, and the one-hot targets alike (``mixup_targets``).

    The data module's datasets apply it (``ClipDataset``: on waveforms, or on cached fbanks
    with ``mix_fbanks``; ``WaveformClipDataset``: on waveforms).

    Args:
        rate: Probability in [0, 1] that a training clip is mixed.
        alpha: Beta parameter (> 0); the authors' 10 (docs/method.md) gives lambda of mean 0.5
            and variance 1 / (4 (2 alpha + 1)) = 1/84.
    """

    def __init__(self, rate: float, alpha: float = 10.0) -> None:
        if not _is_real(rate) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"Expected argument `rate` to be in [0, 1] but got {rate!r}.")
        if not _is_real(alpha) or not alpha > 0 or not math.isfinite(alpha):
            raise ValueError(
                f"Expected argument `alpha` to be a positive number but got {alpha!r}."
            )
        self.rate = float(rate)
        self.alpha = float(alpha)

    def sample_lambda(self, generator: torch.Generator | None = None) -> float:
        """Draws the weight lambda ~ Beta(alpha, alpha) of the clip being mixed.

        torch's Beta sampler takes no generator, so a numpy generator is seeded from
        ``generator`` (or from the global torch RNG when None).
        """
        seed = int(torch.randint(2**62, (1,), generator=generator))
        return float(np.random.default_rng(seed).beta(self.alpha, self.alpha))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mixup):
            return NotImplemented
        return (self.rate, self.alpha) == (other.rate, other.alpha)

    def __hash__(self) -> int:
        return hash((self.rate, self.alpha))

    def __repr__(self) -> str:
        return f"Mixup(rate={self.rate}, alpha={self.alpha})"


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_lambda(lam: float) -> None:
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"Expected argument `lam` to be in [0, 1] but got {lam!r}.")


def mix_waveforms(waveform: Tensor, other: Tensor, lam: float) -> Tensor:
    """``lam * waveform + (1 - lam) * other``, ``other`` zero-padded or cropped to its length (AST).

    Shape:
        - waveform: ``[N]``; other: ``[M]``.
        - Output: ``[N]``.
    """
    _check_lambda(lam)
    length = waveform.shape[0]
    other = torch.nn.functional.pad(other[:length], (0, max(0, length - other.shape[0])))
    return lam * waveform + (1.0 - lam) * other


def mix_fbanks(
    fbank: Tensor, other: Tensor, lam: float, num_frames: int, other_num_frames: int
) -> Tensor:
    """Approximates the fbank of ``mix_waveforms(a, b, lam)`` from the fbanks of a and b.

    Used when features come from the cache and no waveform is at hand. Mixing amplitudes by
    (lam, 1 - lam) mixes mel powers by (lam**2, (1 - lam)**2) plus a cross term whose
    expectation is 0 for uncorrelated clips, so each valid frame becomes
    ``log(lam**2 exp(a) + (1 - lam)**2 exp(b))`` (with ``b``'s power 0 past its end), floored
    at Kaldi's log(eps). Frames past ``a``'s end stay zero padding, as in the waveform route.
    It is an approximation: the cross term and frames straddling a clip end are not reproduced.

    Args:
        fbank: Un-normalised padded log-mel fbank of clip a.
        other: Un-normalised padded log-mel fbank of clip b.
        lam: Weight of clip a.
        num_frames: Frames of a before padding (may exceed T when a was cropped).
        other_num_frames: Frames of b before padding.

    Shape:
        - fbank, other: ``[T, F]``.
        - Output: ``[T, F]``.
    """
    _check_lambda(lam)
    if fbank.shape != other.shape:
        raise ValueError(
            f"Expected arguments `fbank` and `other` to have the same shape but got "
            f"{tuple(fbank.shape)} and {tuple(other.shape)}."
        )
    valid = min(num_frames, fbank.shape[0])
    a = fbank[:valid].to(torch.float64)
    b = other[:valid].to(torch.float64).clone()
    b[other_num_frames:] = -math.inf
    log_weight_a = 2 * math.log(lam) if lam > 0 else -math.inf
    log_weight_b = 2 * math.log1p(-lam) if lam < 1 else -math.inf
    mixed = torch.logaddexp(a + log_weight_a, b + log_weight_b).clamp_min(_LOG_POWER_FLOOR)
    out = torch.zeros_like(fbank)
    out[:valid] = mixed.to(fbank.dtype)
    return out


def mixup_targets(target: int, other_target: int, lam: float, num_classes: int) -> Tensor:
    """Soft target ``lam * one_hot(target) + (1 - lam) * one_hot(other_target)``.

    ``lam = 1`` gives the plain one-hot vector.

    Shape:
        - Output: ``[num_classes]``, float32, sums to 1.
    """
    _check_lambda(lam)
    for name, value in (("target", target), ("other_target", other_target)):
        if not 0 <= value < num_classes:
            raise ValueError(
                f"Expected argument `{name}` to be in [0, {num_classes}) but got {value!r}."
            )
    soft = torch.zeros(num_classes, dtype=torch.float32)
    soft[other_target] += 1.0 - lam
    soft[target] += lam
    return soft


__all__ = ["Mixup", "SpecAugment", "mix_fbanks", "mix_waveforms", "mixup_targets"]
