"""Audio loading, Kaldi fbank features and normalisation, against analytic and peer references."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.compliance.kaldi
from torch.utils.data import DataLoader

from add_lightning.data import audio
from add_lightning.data.audio import AudioError, load_audio
from add_lightning.data.augment import Mixup, SpecAugment
from add_lightning.data.clip_dataset import Clip, ClipDataset
from add_lightning.data.fbank import (
    FbankOptions,
    compute_fbank,
    compute_fbank_frames,
    load_fbank_frames,
    pad_or_crop,
)
from add_lightning.data.normalization import (
    AUDIOSET_NORMALIZATION,
    BEATS_NORMALIZATION,
    ESC50_NORMALIZATION,
    NORMALIZATION_PRESETS,
    SPEECH_COMMANDS_NORMALIZATION,
    Normalization,
    RawFeatures,
    compute_normalization,
    raw_feature_loader,
)

RATE = 16000


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _waveform(kind: str, num_samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / RATE
    if kind == "tone":
        wave = 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * np.sin(2 * np.pi * 3000.0 * t)
    elif kind == "noise":
        wave = 0.1 * rng.standard_normal(num_samples)
    else:  # chirp with an offset and a quiet start
        wave = 0.3 * np.sin(2 * np.pi * (100.0 + 2000.0 * t) * t) + 0.05
        wave[: num_samples // 4] *= 1e-3
    return wave.astype(np.float32)


def _write(path: Path, wave: np.ndarray, rate: int = RATE, **kwargs: str) -> Path:
    soundfile.write(path, wave, rate, **kwargs)
    return path


# --- parity with transformers' ASTFeatureExtractor -------------------------------------------


@pytest.mark.parametrize("kind", ["tone", "noise", "chirp"])
@pytest.mark.parametrize(
    ("num_samples", "target_frames"),
    [(8000, 1024), (RATE * 11, 1024), (RATE, 128), (RATE * 2, 128)],
    ids=["short-1024", "long-1024", "short-128", "long-128"],
)
def test_fbank_matches_ast_feature_extractor(kind: str, num_samples: int, target_frames: int):
    from transformers import ASTFeatureExtractor

    wave = _waveform(kind, num_samples)
    extractor = ASTFeatureExtractor(
        sampling_rate=RATE,
        num_mel_bins=128,
        max_length=target_frames,
        mean=AUDIOSET_NORMALIZATION.mean,
        std=AUDIOSET_NORMALIZATION.std,
    )
    expected = extractor(wave, sampling_rate=RATE, return_tensors="pt").input_values[0]
    options = FbankOptions(num_mel_bins=128, window_type="hanning", target_frames=target_frames)
    actual = AUDIOSET_NORMALIZATION.apply(compute_fbank(torch.from_numpy(wave), options))
    assert actual.shape == (target_frames, 128)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_fbank_matches_beats_preprocessing():
    # BEATs.preprocess: fbank(waveform * 2**15, num_mel_bins=128, sample_frequency=16000,
    # frame_length=25, frame_shift=10) with kaldi's default (povey) window.
    wave = torch.from_numpy(_waveform("noise", RATE))
    expected = torchaudio.compliance.kaldi.fbank(
        wave.unsqueeze(0) * 2**15,
        num_mel_bins=128,
        sample_frequency=RATE,
        frame_length=25,
        frame_shift=10,
    )
    options = FbankOptions(window_type="povey", waveform_scale=32768.0, target_frames=98)
    actual = compute_fbank(wave, options)
    assert expected.shape == (98, 128)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        BEATS_NORMALIZATION.apply(actual), (expected - 15.41663) / (2 * 6.55582)
    )


def test_frame_count_is_kaldi_snip_edges():
    for num_samples in (400, 559, 560, 16000):
        frames = compute_fbank_frames(torch.zeros(num_samples) + 0.1, FbankOptions())
        assert frames.shape == (1 + (num_samples - 400) // 160, 128)


def test_pad_or_crop_by_hand():
    fbank = torch.arange(12.0).reshape(3, 4)
    padded = pad_or_crop(fbank, 5)
    assert torch.equal(padded[:3], fbank)
    assert torch.equal(padded[3:], torch.zeros(2, 4))
    assert torch.equal(pad_or_crop(fbank, 2), fbank[:2])
    assert torch.equal(pad_or_crop(fbank, 3), fbank)


@pytest.mark.parametrize(
    ("waveform", "match"),
    [
        (torch.zeros(2, 16000), r"1-D \[num_samples\] but got shape \(2, 16000\)"),
        (torch.zeros(16000, dtype=torch.int16), "floating point but got torch.int16"),
        (torch.zeros(399), "at least one window .*400 samples.* but got 399"),
    ],
    ids=["2d", "int", "too-short"],
)
def test_compute_fbank_rejects_bad_waveforms(waveform: torch.Tensor, match: str):
    with pytest.raises(ValueError, match=match):
        compute_fbank(waveform, FbankOptions())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sample_rate", 0),
        ("sample_rate", 16000.0),
        ("num_mel_bins", -1),
        ("num_mel_bins", True),
        ("frame_length_ms", 0.0),
        ("frame_length_ms", 0.1),
        ("frame_shift_ms", math.nan),
        ("frame_shift_ms", 0.01),
        ("window_type", "hann"),
        ("dither", -0.1),
        ("target_frames", 0),
        ("waveform_scale", 0.0),
        ("low_freq", -1.0),
        ("low_freq", 9000.0),
        ("high_freq", 9000.0),
        ("high_freq", "8000"),
    ],
)
def test_fbank_options_validation_names_the_field(field: str, value: object):
    with pytest.raises(ValueError, match=f"`{field}`") as info:
        FbankOptions(**{field: value})
    assert repr(value) in str(info.value)


def test_fbank_options_accepts_kaldi_windows():
    for window in ("hamming", "hanning", "povey", "rectangular", "blackman"):
        assert FbankOptions(window_type=window).window_type == window


# --- load_audio ------------------------------------------------------------------------------


def test_resampling_keeps_frequency_and_amplitude(tmp_path: Path):
    file_rate, seconds, frequency, amplitude = 44100, 1.0, 1000.0, 0.5
    n = int(file_rate * seconds)
    wave = amplitude * np.sin(2 * np.pi * frequency * np.arange(n) / file_rate)
    path = _write(tmp_path / "tone.wav", wave, rate=file_rate, subtype="FLOAT")
    loaded = load_audio(path, sample_rate=RATE)
    assert loaded.dtype == torch.float32
    assert loaded.shape == (math.ceil(n * RATE / file_rate),)
    t = np.arange(loaded.shape[0]) / RATE
    expected = amplitude * np.sin(2 * np.pi * frequency * t)
    interior = slice(200, -200)  # the sinc filter sees zeros beyond the ends
    np.testing.assert_allclose(loaded.numpy()[interior], expected[interior], atol=2e-3)


def test_downmix_is_channel_mean(tmp_path: Path):
    left = _waveform("tone", 4000)
    right = _waveform("noise", 4000)
    path = _write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path).numpy(), (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize(
    ("suffix", "subtype", "atol"),
    [(".wav", "PCM_16", 1 / 2**15), (".flac", "PCM_16", 1 / 2**15), (".ogg", "VORBIS", None)],
)
def test_format_round_trip(tmp_path: Path, suffix: str, subtype: str, atol: float | None):
    wave = _waveform("tone", RATE)
    path = _write(tmp_path / f"clip{suffix}", wave, subtype=subtype)
    loaded = load_audio(path).numpy()
    assert loaded.shape == wave.shape
    if atol is not None:
        np.testing.assert_allclose(loaded, wave, atol=atol)
    else:  # lossy: the waveform is kept up to coding noise
        assert np.corrcoef(loaded, wave)[0, 1] > 0.99


def test_load_audio_missing_file_names_path(tmp_path: Path):
    path = tmp_path / "missing.wav"
    with pytest.raises(AudioError, match=r"missing.wav does not exist") as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_load_audio_corrupt_file_names_path(tmp_path: Path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(AudioError, match="Could not decode") as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_load_audio_empty_file_names_path(tmp_path: Path):
    path = _write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match="contains no samples") as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_load_audio_non_finite_names_path(tmp_path: Path):
    wave = np.zeros(1000, dtype=np.float32)
    wave[10] = np.nan
    path = _write(tmp_path / "nan.wav", wave, subtype="FLOAT")
    with pytest.raises(AudioError, match="non-finite") as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_overflowing_filterbank_names_path(tmp_path: Path):
    # finite samples whose power spectrum overflows float32: the fbank would be all NaN/inf
    wave = np.full(1600, 1e20, dtype=np.float32)
    wave[::2] = -1e20
    path = _write(tmp_path / "loud.wav", wave, subtype="FLOAT")
    with pytest.raises(
        AudioError, match=r"non-finite values.*largest \|sample\| is 1e\+20"
    ) as info:
        load_fbank_frames(path, FbankOptions())
    assert str(path) in str(info.value)


def test_load_audio_is_an_audio_error_and_value_error():
    assert issubclass(AudioError, ValueError)


@pytest.mark.parametrize("rate", [0, -16000, 16000.0])
def test_load_audio_rejects_bad_sample_rate(tmp_path: Path, rate: object):
    path = _write(tmp_path / "a.wav", _waveform("tone", 1000))
    with pytest.raises(ValueError, match="`sample_rate` to be a positive integer"):
        load_audio(path, sample_rate=rate)  # type: ignore[arg-type]


# --- normalisation ---------------------------------------------------------------------------


def test_normalization_by_hand():
    x = torch.tensor([[-4.0, 0.0], [2.0, 10.0]])
    norm = Normalization(mean=2.0, std=3.0)
    expected = torch.tensor([[-1.0, -1 / 3], [0.0, 4 / 3]])
    torch.testing.assert_close(norm.apply(x), expected)


def test_normalization_presets_are_the_published_numbers():
    assert (AUDIOSET_NORMALIZATION.mean, AUDIOSET_NORMALIZATION.std) == (-4.2677393, 4.5689974)
    assert (ESC50_NORMALIZATION.mean, ESC50_NORMALIZATION.std) == (-6.6268077, 5.358466)
    assert (SPEECH_COMMANDS_NORMALIZATION.mean, SPEECH_COMMANDS_NORMALIZATION.std) == (
        -6.845978,
        5.5654526,
    )
    assert (BEATS_NORMALIZATION.mean, BEATS_NORMALIZATION.std) == (15.41663, 6.55582)
    for name, preset in NORMALIZATION_PRESETS.items():
        assert Normalization.from_preset(name) is preset


def test_normalization_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"`name` to be one of .* but got 'imagenet'"):
        Normalization.from_preset("imagenet")
    with pytest.raises(ValueError, match=r"`std` to be a positive number but got 0.0"):
        Normalization(mean=0.0, std=0.0)
    with pytest.raises(ValueError, match="`mean` to be a finite number but got nan"):
        Normalization(mean=math.nan, std=1.0)


def _clips(tmp_path: Path, count: int) -> list[Clip]:
    clips = []
    for i in range(count):
        num_samples = RATE // 2 + 2000 * i  # shorter and longer than the target
        path = _write(tmp_path / f"c{i}.wav", _waveform("noise", num_samples, seed=i))
        clips.append(Clip(path=path, label=i % 2, clip_id=f"c{i}"))
    return clips


def test_compute_normalization_matches_float64_reference(tmp_path: Path):
    from transformers import ASTFeatureExtractor

    clips = _clips(tmp_path, 5)
    options = FbankOptions(target_frames=64)
    dataset = ClipDataset(clips, num_classes=2, features=options, normalization=None)
    stats = compute_normalization(RawFeatures(dataset))
    extractor = ASTFeatureExtractor(max_length=64, do_normalize=False)
    values = np.concatenate(
        [
            extractor(soundfile.read(c.path, dtype="float32")[0], sampling_rate=RATE)[
                "input_values"
            ][0].astype(np.float64)
            for c in clips
        ]
    )
    assert stats.mean == pytest.approx(values.mean(), abs=1e-4)
    assert stats.std == pytest.approx(values.std(), abs=1e-4)


def test_compute_normalization_takes_any_iterable_of_feature_tensors(tmp_path: Path):
    clips = _clips(tmp_path, 5)
    dataset = ClipDataset(clips, 2, FbankOptions(target_frames=64), None)
    in_process = compute_normalization(RawFeatures(dataset))
    from_workers = compute_normalization(raw_feature_loader(dataset, num_workers=2))
    assert from_workers == in_process  # the same tensors in the same order
    batched = compute_normalization(DataLoader(RawFeatures(dataset), batch_size=2))
    values = torch.cat([dataset.raw_features(i).flatten() for i in range(len(dataset))]).double()
    assert batched.mean == pytest.approx(values.mean().item(), rel=1e-12)
    assert batched.std == pytest.approx(values.std(unbiased=False).item(), rel=1e-12)


def test_compute_normalization_reads_only_the_given_clips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    clips = _clips(tmp_path, 6)
    train = clips[::2]
    read: list[Path] = []
    original = audio.load_audio

    def spy(path: Path, sample_rate: int = RATE) -> torch.Tensor:
        read.append(Path(path))
        return original(path, sample_rate)

    monkeypatch.setattr(audio, "load_audio", spy)
    options = FbankOptions(target_frames=64)
    # augmentation settings are ignored: statistics use un-augmented, un-normalised features
    dataset = ClipDataset(
        train,
        2,
        options,
        ESC50_NORMALIZATION,
        train=True,
        spec_augment=SpecAugment(freq_mask=8),
        mixup=Mixup(rate=1.0),
    )
    compute_normalization(RawFeatures(dataset))
    assert read == [c.path for c in train]


def test_compute_normalization_rejects_empty_and_constant_data():
    class Constant:
        def __init__(self, length: int) -> None:
            self.length = length

        def __len__(self) -> int:
            return self.length

        def raw_features(self, index: int) -> torch.Tensor:
            return torch.full((4, 3), 2.0)

    with pytest.raises(ValueError, match="at least one clip but it is empty"):
        compute_normalization(RawFeatures(Constant(0)))
    with pytest.raises(ValueError, match=r"to vary but all 24 values equal 2.0"):
        compute_normalization(RawFeatures(Constant(2)))
