"""Training augmentation: SpecAugment masks and mixup, as in the AST recipe the paper follows.

``SpecAugment`` and ``Mixup`` are what a data module's ``spec_augment`` and ``mixup`` take
(``class_path`` in YAML); the functions below are the arithmetic of mixing.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchaudio.functional
from torch import Tensor, nn

_LOG_POWER_FLOOR = math.log(torch.finfo(torch.float32).eps)  # Kaldi floors mel power at eps


#: The widest a mask may be, as a fraction of the input's frames (or bins): wider masks hide
#: most of the clip (Park et al. bound the time mask by a fraction ``p`` of the input too).
_MAX_MASK_FRACTION = 0.5


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al., 2019) with torchaudio's masking functions.

    One frequency band of width ``U[0, freq_mask)`` bins and one time span of width
    ``U[0, time_mask)`` frames are set to ``mask_value``, independently per example of a batch.
    AST masks the un-normalised log-mel fbank with 0 before normalising; ``ClipDataset`` does the
    same. A width of 0 disables that mask.

    A width is either absolute (an int: AST's ``freqm``/``timem``, sized for one input length,
    e.g. 96 of 512 frames for ESC-50) or relative to the input (a float in ``[0, 0.5]``: 0.1875
    masks up to 96 of 512 frames and 24 of 128), which stays right when ``target_frames``
    changes. An absolute width larger than half the input's frames (or bins) is refused when
    the input's size is known (:meth:`mask_widths`, first called by :meth:`forward`): with 128
    frames, AST's ``time_mask: 96`` would hide up to 75 % of every clip.

    Args:
        freq_mask: Largest frequency mask width: bins (int) or a fraction of the bins (float).
        time_mask: Largest time mask width: frames (int) or a fraction of the frames (float).
        mask_value: Value written into the masked cells.

    Shape:
        - features: ``[T, F]`` or ``[B, T, F]``.
        - Output: same as the input.
    """

    def __init__(
        self, freq_mask: int | float = 0, time_mask: int | float = 0, mask_value: float = 0.0
    ) -> None:
        super().__init__()
        _check_width("freq_mask", freq_mask, "bins")
        _check_width("time_mask", time_mask, "frames")
        self.freq_mask = freq_mask
        self.time_mask = time_mask
        self.mask_value = mask_value
        #: (name, width) of the masks that mask anything: ``ClipDataset`` augments when non-empty.
        self.masks = tuple(
            (name, width)
            for name, width in (("freq_mask", freq_mask), ("time_mask", time_mask))
            if width > 0
        )

    def mask_widths(self, frames: int, bins: int) -> tuple[int, int]:
        """The largest time and frequency mask widths for inputs of ``frames`` x ``bins``.

        A data module can call it with its input size to refuse a too wide mask before training.

        Returns:
            ``(time width in frames, frequency width in bins)``.

        Raises:
            ValueError: If an absolute width is larger than half of the input's size.
        """
        return (
            _width_for("time_mask", self.time_mask, frames, "frames"),
            _width_for("freq_mask", self.freq_mask, bins, "bins"),
        )

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
        time_width, freq_width = self.mask_widths(features.shape[-2], features.shape[-1])
        batch = features if features.dim() == 3 else features.unsqueeze(0)
        specgram = batch.transpose(1, 2)  # [B, F, T] as torchaudio expects
        if generator is None:
            specgram = self._mask(specgram, freq_width, time_width)
        else:
            seed = int(torch.randint(2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                specgram = self._mask(specgram, freq_width, time_width)
        masked = specgram.transpose(1, 2)
        return masked if features.dim() == 3 else masked.squeeze(0)

    def _mask(self, specgram: Tensor, freq_width: int, time_width: int) -> Tensor:
        # one mask per example (torchaudio's iid_masks), frequency first, then time
        for axis, width in ((1, freq_width), (2, time_width)):
            if width > 0:
                specgram = torchaudio.functional.mask_along_axis_iid(
                    specgram, width, self.mask_value, axis
                )
        return specgram

    def extra_repr(self) -> str:
        return f"freq_mask={self.freq_mask}, time_mask={self.time_mask}"


def _check_width(name: str, width: object, unit: str) -> None:
    valid = not isinstance(width, bool) and (
        (isinstance(width, int) and width >= 0)
        or (isinstance(width, float) and 0.0 <= width <= _MAX_MASK_FRACTION)
    )
    if not valid:
        raise ValueError(
            f"Expected argument `{name}` to be {unit} (an int >= 0) or a fraction of the "
            f"input's {unit} (a float in [0, {_MAX_MASK_FRACTION}]) but got {width!r}."
        )


def _width_for(name: str, width: int | float, size: int, unit: str) -> int:
    """The mask width in ``unit`` for an input of ``size``; refuses one wider than allowed."""
    if isinstance(width, float):
        return int(width * size)
    if width > _MAX_MASK_FRACTION * size:
        raise ValueError(
            f"SpecAugment `{name}` {width} can mask {width / size:.0%} of the input's {size} "
            f"{unit}; expected at most {int(_MAX_MASK_FRACTION * size)} (half): give a smaller "
            "width or a fraction of the input (AST's ESC-50 masks, 96 of 512 frames and 24 of "
            "128 bins, are 0.1875)"
        )
    return width


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


__all__ = [
    "_MAX_MASK_FRACTION",
    "Mixup",
    "SpecAugment",
    "mix_fbanks",
    "mix_waveforms",
    "mixup_targets",
]
