"""SpecAugment, mixup and the ClipDataset's augmentation policy (train only, seeded)."""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader, Sampler, default_collate

from add_lightning.data.augment import Mixup, SpecAugment, mix_fbanks, mix_waveforms, mixup_targets
from add_lightning.data.clip_dataset import Clip, ClipDataset
from add_lightning.data.fbank import FbankOptions, compute_fbank_frames
from add_lightning.data.normalization import ESC50_NORMALIZATION

RATE = 16000
OPTIONS = FbankOptions(target_frames=64)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --- SpecAugment -----------------------------------------------------------------------------


def _masked_bands(masked: torch.Tensor) -> tuple[list[int], list[int]]:
    """Fully zeroed frequency bins and time frames of a [T, F] tensor made from ones."""
    zero = masked == 0
    return (
        torch.nonzero(zero.all(dim=0)).flatten().tolist(),
        torch.nonzero(zero.all(dim=1)).flatten().tolist(),
    )


def _is_contiguous(indices: list[int]) -> bool:
    return indices == list(range(indices[0], indices[0] + len(indices))) if indices else True


@pytest.mark.parametrize(("freq_mask", "time_mask"), [(24, 0), (0, 16), (24, 16)])
def test_spec_augment_masks_one_band_per_axis(freq_mask: int, time_mask: int):
    augment = SpecAugment(freq_mask=freq_mask, time_mask=time_mask)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        masked = augment(torch.ones(64, 128), generator=generator)
        bins, frames = _masked_bands(masked)
        assert _is_contiguous(bins) and len(bins) < max(freq_mask, 1)
        assert _is_contiguous(frames) and len(frames) < max(time_mask, 1)
        # every zero lies in the masked band(s)
        zero = masked == 0
        zero[:, bins] = False
        zero[frames, :] = False
        assert not zero.any()


def test_spec_augment_batch_masks_each_example_independently():
    augment = SpecAugment(freq_mask=48, time_mask=48)  # at most half of 128 frames
    masked = augment(torch.ones(16, 128, 128), generator=torch.Generator().manual_seed(1))
    assert masked.shape == (16, 128, 128)
    bands = {tuple(_masked_bands(example)[0]) for example in masked}
    assert len(bands) > 8


def test_spec_augment_is_a_function_of_the_generator_and_keeps_global_rng():
    augment = SpecAugment(freq_mask=24, time_mask=24)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = augment(torch.ones(64, 128), generator=torch.Generator().manual_seed(7))
    torch.manual_seed(999)  # the global RNG does not matter when a generator is given
    second = augment(torch.ones(64, 128), generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second)
    torch.manual_seed(123)
    augment(torch.ones(64, 128), generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.random.get_rng_state(), before)


def test_spec_augment_zero_widths_disable():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 128, generator=generator)
    assert torch.equal(SpecAugment(0, 0)(x), x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"freq_mask": -1}, r"`freq_mask` to be bins \(an int >= 0\) or a .* got -1"),
        ({"time_mask": 2.5}, r"`time_mask` to be frames \(an int >= 0\) or a .* got 2.5"),
        ({"freq_mask": -2}, r"`freq_mask` to be bins \(an int >= 0\) .* got -2"),  # ClipDataset's
    ],
)
def test_spec_augment_rejects_bad_widths(kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        SpecAugment(**kwargs)


def test_spec_augment_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[T, F\] or \[B, T, F\] but got \(128,\)"):
        SpecAugment(8, 8)(torch.ones(128))


# --- mixup -----------------------------------------------------------------------------------


def test_mixup_lambda_is_beta_10_10():
    generator = torch.Generator().manual_seed(0)
    mixup = Mixup(rate=1.0)  # the default alpha: the authors' 10
    samples = np.array([mixup.sample_lambda(generator) for _ in range(20000)])
    assert samples.min() > 0 and samples.max() < 1
    # Beta(10, 10): mean 1/2, variance ab / ((a+b)^2 (a+b+1)) = 100 / (400 * 21) = 1/84
    assert samples.mean() == pytest.approx(0.5, abs=3e-3)
    assert samples.var() == pytest.approx(1 / 84, rel=0.05)
    again = torch.Generator().manual_seed(0)
    assert mixup.sample_lambda(again) == samples[0]


def test_mixup_lambda_rejects_bad_alpha():
    with pytest.raises(ValueError, match="`alpha` to be a positive number but got 0"):
        Mixup(rate=1.0, alpha=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rate": 1.5}, r"`rate` to be in \[0, 1\] but got 1.5"),  # was ClipDataset's `mixup_rate`
        ({"rate": True}, r"`rate` to be in \[0, 1\] but got True"),
        ({"rate": 0.5, "alpha": float("inf")}, "`alpha` to be a positive number but got inf"),
    ],
)
def test_mixup_rejects_bad_arguments(kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        Mixup(**kwargs)


def test_mixup_alpha_sets_the_spread_of_lambda():
    generator = torch.Generator().manual_seed(0)
    samples = np.array([Mixup(1.0, alpha=2.0).sample_lambda(generator) for _ in range(20000)])
    # Beta(2, 2): variance ab / ((a+b)^2 (a+b+1)) = 4 / (16 * 5) = 1/20
    assert samples.var() == pytest.approx(1 / 20, rel=0.05)


def test_mix_waveforms_pads_and_crops_the_other_clip():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(
        mix_waveforms(a, torch.tensor([10.0, 20.0]), 0.25), torch.tensor([7.75, 15.5, 0.75, 1.0])
    )
    torch.testing.assert_close(
        mix_waveforms(a, torch.arange(6.0), 0.5), torch.tensor([0.5, 1.5, 2.5, 3.5])
    )
    with pytest.raises(ValueError, match=r"`lam` to be in \[0, 1\] but got 1.5"):
        mix_waveforms(a, a, 1.5)


def test_mix_fbanks_matches_float64_power_mix():
    rng = np.random.default_rng(0)
    a, b = rng.normal(-5, 3, (10, 4)), rng.normal(-5, 3, (10, 4))
    a[7:], b[5:] = 0.0, 0.0  # padding after 7 and 5 frames
    lam = 0.3
    expected = np.zeros_like(a)
    expected[:5] = np.log(lam**2 * np.exp(a[:5]) + (1 - lam) ** 2 * np.exp(b[:5]))
    expected[5:7] = np.log(lam**2 * np.exp(a[5:7]))
    mixed = mix_fbanks(torch.tensor(a, dtype=torch.float32), torch.tensor(b), lam, 7, 5)
    np.testing.assert_allclose(mixed.numpy(), expected, atol=1e-5)
    same = mix_fbanks(torch.tensor(a), torch.tensor(b), 1.0, 7, 5)
    np.testing.assert_allclose(same.numpy(), a, atol=1e-12)


@pytest.mark.parametrize("lam", [0.3, 0.5, 0.6])
def test_mix_fbanks_approximates_the_fbank_of_mixed_waveforms(lam: float):
    rng = np.random.default_rng(0)
    a = torch.from_numpy(0.3 * rng.standard_normal(RATE)).float()
    b = torch.from_numpy(0.05 * rng.standard_normal(RATE // 2)).float()
    fa, fb = compute_fbank_frames(a, OPTIONS), compute_fbank_frames(b, OPTIONS)
    fb_padded = torch.cat([fb, torch.zeros(fa.shape[0] - fb.shape[0], 128)])
    approx = mix_fbanks(fa, fb_padded, lam, fa.shape[0], fb.shape[0])
    exact = compute_fbank_frames(mix_waveforms(a, b, lam), OPTIONS)
    # unbiased up to the cross term (which averages out) and frames straddling b's end
    assert abs(float((approx - exact).mean())) < 0.1
    assert float((approx - exact).abs().mean()) < 0.25
    # mixing powers with the amplitude weights (lam, 1 - lam) instead would be biased
    fb_silent = torch.cat([fb, torch.full((fa.shape[0] - fb.shape[0], 128), -torch.inf)])
    linear = torch.logaddexp(fa + math.log(lam), fb_silent + math.log(1 - lam))
    assert float((linear - exact).mean()) > 0.4


def test_mixup_targets_by_hand():
    torch.testing.assert_close(mixup_targets(2, 0, 0.75, 4), torch.tensor([0.25, 0, 0.75, 0]))
    torch.testing.assert_close(mixup_targets(1, 1, 0.4, 3), torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match=r"`other_target` to be in \[0, 3\) but got 3"):
        mixup_targets(0, 3, 0.5, 3)


# --- ClipDataset augmentation policy ---------------------------------------------------------


def _clips(tmp_path: Path, count: int = 6) -> list[Clip]:
    """Clip i has label i, so a mixed target names both clips."""
    rng = np.random.default_rng(0)
    clips = []
    for i in range(count):
        wave = 0.2 * rng.standard_normal(RATE // 2 + 1000 * i).astype(np.float32)
        path = tmp_path / f"c{i}.wav"
        soundfile.write(path, wave, RATE, subtype="FLOAT")
        clips.append(Clip(path=path, label=i, clip_id=f"c{i}"))
    return clips


def _reference_features(waveform: np.ndarray) -> torch.Tensor:
    from transformers import ASTFeatureExtractor

    extractor = ASTFeatureExtractor(
        max_length=64, mean=ESC50_NORMALIZATION.mean, std=ESC50_NORMALIZATION.std
    )
    return extractor(waveform, sampling_rate=RATE, return_tensors="pt").input_values[0]


def _read(clip: Clip) -> np.ndarray:
    return soundfile.read(clip.path, dtype="float32")[0]


def test_evaluation_items_are_never_augmented(tmp_path: Path):
    clips = _clips(tmp_path)
    dataset = ClipDataset(
        clips,
        6,
        OPTIONS,
        ESC50_NORMALIZATION,
        spec_augment=SpecAugment(24, 24),
        mixup=Mixup(rate=1.0),
    )
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for i, clip in enumerate(clips):
            item = dataset[i]
            assert item["clip_id"] == clip.clip_id
            assert item["target"].dtype == torch.int64 and item["target"].shape == ()
            assert int(item["target"]) == clip.label
            torch.testing.assert_close(
                item["features"], _reference_features(_read(clip)), atol=1e-4, rtol=0
            )


def test_spec_augment_only_in_train_and_seeded_per_epoch(tmp_path: Path):
    clips = _clips(tmp_path)
    kwargs = {"spec_augment": SpecAugment(freq_mask=24, time_mask=24), "seed": 3}
    train = ClipDataset(clips, 6, OPTIONS, ESC50_NORMALIZATION, train=True, **kwargs)
    clean = _reference_features(_read(clips[0]))
    masked_value = (0 - ESC50_NORMALIZATION.mean) / (2 * ESC50_NORMALIZATION.std)
    first = train[0]
    assert first["target"].dtype == torch.int64
    changed = first["features"] != clean
    assert changed.any()  # with these seeds the masks are not empty
    torch.testing.assert_close(
        first["features"][changed], torch.full_like(first["features"][changed], masked_value)
    )
    assert torch.equal(train[0]["features"], first["features"])  # same (seed, epoch, index)
    same_seed = ClipDataset(clips, 6, OPTIONS, ESC50_NORMALIZATION, train=True, **kwargs)
    assert torch.equal(same_seed[0]["features"], first["features"])
    train.set_epoch(1)
    assert train.epoch == 1
    assert not torch.equal(train[0]["features"], first["features"])
    kwargs["seed"] = 4
    other_seed = ClipDataset(clips, 6, OPTIONS, ESC50_NORMALIZATION, train=True, **kwargs)
    assert not torch.equal(other_seed[0]["features"], first["features"])


def test_mixup_mixes_waveforms_and_targets_alike(tmp_path: Path):
    clips = _clips(tmp_path)
    dataset = ClipDataset(clips, 6, OPTIONS, ESC50_NORMALIZATION, train=True, mixup=Mixup(1.0))
    for i, clip in enumerate(clips):
        item = dataset[i]
        target = item["target"]
        assert target.dtype == torch.float32 and target.shape == (6,)
        assert float(target.sum()) == pytest.approx(1.0, abs=1e-6)
        others = [j for j in torch.nonzero(target).flatten().tolist() if j != clip.label]
        assert len(others) == 1  # mixed with another clip, never with itself
        lam = float(target[clip.label])
        a, b = _read(clip), _read(clips[others[0]])
        b = np.pad(b[: len(a)], (0, max(0, len(a) - len(b))))
        expected = _reference_features((lam * a + (1 - lam) * b).astype(np.float32))
        torch.testing.assert_close(item["features"], expected, atol=1e-4, rtol=0)


def test_mixup_targets_are_one_hot_when_not_mixed_and_collate(tmp_path: Path):
    clips = _clips(tmp_path)
    dataset = ClipDataset(clips, 6, OPTIONS, None, train=True, mixup=Mixup(0.5), seed=1)
    items = []
    for epoch in range(4):
        dataset.set_epoch(epoch)
        items += [dataset[i] for i in range(len(dataset))]
    one_hot = [it for it in items if float(it["target"].max()) == 1.0]
    assert 0 < len(one_hot) < len(items)  # some mixed, some not
    for item in one_hot:
        assert int((item["target"] != 0).sum()) == 1
    batch = default_collate(items[:4])
    assert batch["target"].shape == (4, 6) and batch["target"].dtype == torch.float32
    torch.testing.assert_close(batch["target"].sum(dim=1), torch.ones(4))
    assert batch["features"].shape == (4, 64, 128)
    assert batch["clip_id"] == [it["clip_id"] for it in items[:4]]


class _EpochSampler(Sampler[int]):
    """Tells the dataset the epoch when an iteration starts, i.e. after workers were forked."""

    def __init__(self, dataset: ClipDataset) -> None:
        self.dataset = dataset
        self.epoch = -1

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        self.epoch += 1
        self.dataset.set_epoch(self.epoch)
        return iter(range(len(self.dataset)))


@pytest.mark.parametrize("persistent", [False, True], ids=["fresh-workers", "persistent"])
def test_workers_follow_set_epoch(tmp_path: Path, persistent: bool):
    clips = _clips(tmp_path, 4)
    dataset = ClipDataset(
        clips,
        4,
        OPTIONS,
        ESC50_NORMALIZATION,
        train=True,
        spec_augment=SpecAugment(time_mask=32),
        mixup=Mixup(rate=0.5),
    )
    loader = DataLoader(
        dataset,
        batch_size=2,
        sampler=_EpochSampler(dataset),
        num_workers=2,
        persistent_workers=persistent,
    )
    epochs = []
    for epoch in range(2):
        from_workers = torch.cat([batch["features"] for batch in loader])
        assert dataset.epoch == epoch
        in_process = torch.stack([dataset[i]["features"] for i in range(len(dataset))])
        assert torch.equal(from_workers, in_process)
        epochs.append(from_workers)
    assert not torch.equal(epochs[0], epochs[1])


def test_dataset_holds_no_audio(tmp_path: Path):
    long_clip = tmp_path / "long.wav"
    soundfile.write(long_clip, np.zeros(RATE * 30, dtype=np.float32), RATE)
    clips = [Clip(path=long_clip, label=0, clip_id=f"c{i}") for i in range(100)]
    dataset = ClipDataset(clips, 1, OPTIONS, None)
    dataset[0]
    assert len(pickle.dumps(dataset)) < 20_000  # 100 x 30 s of float32 audio would be 192 MB


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0}, "`num_classes` to be a positive integer but got 0"),
        ({"num_classes": 3}, r"label to be in \[0, 3\) but clip 'c3' .* has label 3"),
        ({"seed": -1}, "`seed` to be an integer >= 0 but got -1"),
    ],
)
def test_clip_dataset_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str):
    arguments = {"clips": _clips(tmp_path), "num_classes": 6, "features": OPTIONS}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ClipDataset(normalization=None, **arguments)


def test_clip_dataset_rejects_mixup_of_one_clip_and_bad_epoch(tmp_path: Path):
    clips = _clips(tmp_path, 1)
    with pytest.raises(ValueError, match="at least 2 clips for mixup"):
        ClipDataset(clips, 1, OPTIONS, None, train=True, mixup=Mixup(rate=0.5))
    with pytest.raises(ValueError, match="`epoch` to be an integer >= 0 but got -1"):
        ClipDataset(clips, 1, OPTIONS, None).set_epoch(-1)
