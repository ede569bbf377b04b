"""FeatureCache: keys, atomic builds, rebuilding bad caches, and warm reads that decode nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.compliance.kaldi
from torch.utils.data import DataLoader, default_collate

from add_lightning.data import audio
from add_lightning.data.audio import AudioError
from add_lightning.data.augment import Mixup, SpecAugment
from add_lightning.data.cache import FeatureCache
from add_lightning.data.clip_dataset import Clip, ClipDataset, collate_clips
from add_lightning.data.fbank import FbankOptions
from add_lightning.data.normalization import (
    AUDIOSET_NORMALIZATION,
    RawFeatures,
    compute_normalization,
)

RATE = 16000
OPTIONS = FbankOptions(target_frames=48)
LOAD_AUDIO = audio.load_audio  # the real one, whatever a test patches


def _write_clips(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(count):
        wave = 0.1 * rng.standard_normal(RATE // 4 + 1600 * i)  # 23 to 98+ frames
        path = folder / f"clip{i}.wav"
        soundfile.write(path, wave.astype(np.float32), RATE, subtype="FLOAT")
        paths.append(path)
    return paths


@pytest.fixture
def paths(tmp_path: Path) -> list[Path]:
    return _write_clips(tmp_path, 4)


class _CountingLoad:
    """Spy on audio.load_audio; optionally fails after ``fail_after`` calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, path: Path, sample_rate: int = RATE) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        return LOAD_AUDIO(path, sample_rate)


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("audio was decoded or an fbank computed on a warm cache")

    monkeypatch.setattr(audio, "load_audio", fail)
    monkeypatch.setattr(torchaudio.compliance.kaldi, "fbank", fail)


def _reference(path: Path, options: FbankOptions) -> torch.Tensor:
    """Kaldi fbank restated with AST's settings, zero-padded/cropped to target_frames."""
    wave, _ = soundfile.read(path, dtype="float32")
    fbank = torchaudio.compliance.kaldi.fbank(
        torch.from_numpy(wave).unsqueeze(0),
        sample_frequency=RATE,
        num_mel_bins=options.num_mel_bins,
        window_type=options.window_type,
        htk_compat=True,
        use_energy=False,
        dither=0.0,
    )
    out = torch.zeros(options.target_frames, options.num_mel_bins)
    n = min(fbank.shape[0], options.target_frames)
    out[:n] = fbank[:n]
    return out


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_build_then_warm_read_decodes_nothing(
    tmp_path: Path, paths: list[Path], monkeypatch: pytest.MonkeyPatch, dtype: str
):
    cache = FeatureCache(tmp_path / "cache", paths, OPTIONS, dtype=dtype, progress=False)
    assert not cache.is_valid()
    cache.build()
    assert cache.is_valid()
    expected = {p: _reference(p, OPTIONS) for p in paths}
    _forbid_decoding(monkeypatch)
    warm = FeatureCache(tmp_path / "cache", reversed(paths), OPTIONS, dtype=dtype, progress=False)
    tolerance = 2e-2 if dtype == "float16" else 1e-5  # float16 keeps ~3 significant digits
    for path in paths:
        features = warm.features(path)
        assert features.dtype == torch.float32
        assert features.shape == (48, 128)
        torch.testing.assert_close(features, expected[path], atol=tolerance, rtol=0)
        assert warm.num_frames(path) == 1 + (soundfile.info(path).frames - 400) // 160


def test_clip_dataset_reads_warm_cache_without_decoding(
    tmp_path: Path, paths: list[Path], monkeypatch: pytest.MonkeyPatch
):
    FeatureCache(tmp_path / "cache", paths, OPTIONS, progress=False).build()
    _forbid_decoding(monkeypatch)
    cache = FeatureCache(tmp_path / "cache", paths, OPTIONS, progress=False)
    clips = [Clip(path=p, label=0, clip_id=p.stem) for p in paths]
    dataset = ClipDataset(
        clips,
        2,
        OPTIONS,
        AUDIOSET_NORMALIZATION,
        train=True,
        spec_augment=SpecAugment(time_mask=8),
        mixup=Mixup(rate=1.0),
        cache=cache,
    )
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            assert dataset[i]["features"].shape == (48, 128)


def _alternative(field: dataclasses.Field) -> object:
    alternatives = {
        "sample_rate": 8000,
        "num_mel_bins": 64,
        "frame_length_ms": 20.0,
        "frame_shift_ms": 12.5,
        "window_type": "povey",
        "dither": 1.0,
        "target_frames": 49,
        "waveform_scale": 32768.0,
        "low_freq": 40.0,
        "high_freq": -200.0,
    }
    return alternatives[field.name]


@pytest.mark.parametrize("field", dataclasses.fields(FbankOptions), ids=lambda f: f.name)
def test_key_changes_with_every_option(tmp_path: Path, paths: list[Path], field):
    changed = dataclasses.replace(OPTIONS, **{field.name: _alternative(field)})
    assert getattr(changed, field.name) != getattr(OPTIONS, field.name)
    assert FeatureCache(tmp_path, paths, changed).key != FeatureCache(tmp_path, paths, OPTIONS).key


def test_key_changes_with_dtype(tmp_path: Path, paths: list[Path]):
    half = FeatureCache(tmp_path, paths, OPTIONS, dtype="float16")
    assert FeatureCache(tmp_path, paths, OPTIONS, dtype="float32").key != half.key


def test_key_changes_with_the_file_list(tmp_path: Path, paths: list[Path]):
    def key() -> str:
        return FeatureCache(tmp_path, paths, OPTIONS).key

    original = key()
    assert FeatureCache(tmp_path, list(reversed(paths)) + paths[:1], OPTIONS).key == original
    assert FeatureCache(tmp_path, paths[:-1], OPTIONS).key != original
    extra = _write_clips(tmp_path / "more", 1)
    assert FeatureCache(tmp_path, [*paths, *extra], OPTIONS).key != original
    stat = paths[0].stat()
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = key()
    assert touched != original
    with soundfile.SoundFile(paths[1], "r+") as file:  # same mtime, different size
        file.seek(0, soundfile.SEEK_END)
        file.write(np.zeros(160, dtype=np.float32))
    os.utime(paths[1], ns=(stat.st_atime_ns, paths[1].stat().st_mtime_ns))
    resized = key()
    assert resized != touched
    moved = tmp_path / "moved.wav"
    os.replace(paths[2], moved)
    assert FeatureCache(tmp_path, [paths[0], paths[1], moved, paths[3]], OPTIONS).key != resized


def test_interrupted_build_leaves_nothing_trusted(
    tmp_path: Path, paths: list[Path], monkeypatch: pytest.MonkeyPatch
):
    cache_dir = tmp_path / "cache"
    monkeypatch.setattr(audio, "load_audio", _CountingLoad(fail_after=2))
    with pytest.raises(KeyboardInterrupt):
        FeatureCache(cache_dir, paths, OPTIONS, progress=False).build()
    assert list(cache_dir.iterdir()) == []  # no array, no manifest, no temporary file
    spy = _CountingLoad()
    monkeypatch.setattr(audio, "load_audio", spy)
    cache = FeatureCache(cache_dir, paths, OPTIONS, progress=False)
    assert not cache.is_valid()
    cache.build()
    assert spy.calls == len(paths)
    assert {p.name for p in cache_dir.iterdir()} == {
        cache.array_path.name,
        cache.manifest_path.name,
    }


def _corrupt_truncate(cache: FeatureCache) -> None:
    with open(cache.array_path, "r+b") as file:
        file.truncate(cache.array_path.stat().st_size - 100)


def _corrupt_wrong_shape(cache: FeatureCache) -> None:
    np.save(cache.array_path, np.zeros((len(cache), 47, 128), dtype=np.float16))


def _corrupt_wrong_dtype(cache: FeatureCache) -> None:
    np.save(cache.array_path, np.zeros(cache.shape, dtype=np.float32))


def _corrupt_header(cache: FeatureCache) -> None:
    cache.array_path.write_bytes(b"not a numpy file" * 10)


def _corrupt_manifest_json(cache: FeatureCache) -> None:
    cache.manifest_path.write_text("{ half a manifest")


def _corrupt_manifest_paths(cache: FeatureCache) -> None:
    manifest = json.loads(cache.manifest_path.read_text())
    manifest["paths"] = manifest["paths"][::-1]
    cache.manifest_path.write_text(json.dumps(manifest))


def _corrupt_manifest_frames(cache: FeatureCache) -> None:
    manifest = json.loads(cache.manifest_path.read_text())
    del manifest["num_frames"]
    cache.manifest_path.write_text(json.dumps(manifest))


def _remove_manifest(cache: FeatureCache) -> None:
    cache.manifest_path.unlink()


@pytest.mark.parametrize(
    "corrupt",
    [
        _corrupt_truncate,
        _corrupt_wrong_shape,
        _corrupt_wrong_dtype,
        _corrupt_header,
        _corrupt_manifest_json,
        _corrupt_manifest_paths,
        _corrupt_manifest_frames,
        _remove_manifest,
    ],
    ids=lambda f: f.__name__.lstrip("_"),
)
def test_corrupt_cache_is_rebuilt(
    tmp_path: Path, paths: list[Path], monkeypatch: pytest.MonkeyPatch, corrupt
):
    cache_dir = tmp_path / "cache"
    FeatureCache(cache_dir, paths, OPTIONS, progress=False).build()
    corrupt(FeatureCache(cache_dir, paths, OPTIONS))
    spy = _CountingLoad()
    monkeypatch.setattr(audio, "load_audio", spy)
    cache = FeatureCache(cache_dir, paths, OPTIONS, progress=False)
    assert not cache.is_valid()
    features = cache.features(paths[3])  # first lookup rebuilds
    assert spy.calls == len(paths)
    torch.testing.assert_close(features, _reference(paths[3], OPTIONS), atol=2e-2, rtol=0)
    assert cache.is_valid()


def test_pickled_cache_carries_no_array(tmp_path: Path, paths: list[Path]):
    cache = FeatureCache(tmp_path / "cache", paths, OPTIONS, progress=False)
    cache.build()
    before = cache.features(paths[1])
    payload = pickle.dumps(cache)
    assert len(payload) < cache.array_path.stat().st_size
    torch.testing.assert_close(pickle.loads(payload).features(paths[1]), before)


def test_cache_errors_name_the_problem(tmp_path: Path, paths: list[Path]):
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioError, match=r"missing.wav does not exist"):
        FeatureCache(tmp_path, [*paths, missing], OPTIONS)
    with pytest.raises(ValueError, match="`paths` to name at least one file"):
        FeatureCache(tmp_path, [], OPTIONS)
    with pytest.raises(ValueError, match=r"`dtype` to be one of .* but got 'float64'"):
        FeatureCache(tmp_path, paths, OPTIONS, dtype="float64")
    with pytest.raises(ValueError, match="`options` to be FbankOptions but got dict"):
        FeatureCache(tmp_path, paths, {"target_frames": 48})  # type: ignore[arg-type]
    cache = FeatureCache(tmp_path, paths[:2], OPTIONS)
    assert paths[0] in cache and paths[3] not in cache
    with pytest.raises(KeyError, match=r"clip3.wav is not in the feature cache"):
        cache.row(paths[3])


def test_build_names_a_clip_shorter_than_one_window(tmp_path: Path, paths: list[Path]):
    short = tmp_path / "short.wav"
    soundfile.write(short, np.full(300, 0.1, dtype=np.float32), RATE)
    cache = FeatureCache(tmp_path / "cache", [*paths, short], OPTIONS, progress=False)
    with pytest.raises(AudioError, match=r"short.wav: .*at least one window"):
        cache.build()
    assert not any(p.suffix == ".npy" for p in (tmp_path / "cache").iterdir())


def test_clip_dataset_checks_its_cache(tmp_path: Path, paths: list[Path]):
    clips = [Clip(path=p, label=0, clip_id=p.stem) for p in paths]
    cache = FeatureCache(tmp_path, paths[:2], OPTIONS)
    with pytest.raises(ValueError, match=r"2 are missing, e.g. .*clip2.wav"):
        ClipDataset(clips, 1, OPTIONS, None, cache=cache)
    other = FbankOptions(target_frames=64)
    with pytest.raises(ValueError, match="`cache` to hold features computed with"):
        ClipDataset(clips[:2], 1, other, None, cache=cache)


def test_normalization_from_a_shared_cache_uses_the_split_only(
    tmp_path: Path, paths: list[Path], monkeypatch: pytest.MonkeyPatch
):
    from transformers import ASTFeatureExtractor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = FeatureCache(tmp_path / "cache", paths, OPTIONS, progress=False)  # all folds
    split = paths[1:3]
    clips = [Clip(path=p, label=0, clip_id=p.stem) for p in split]
    dataset = ClipDataset(clips, 1, OPTIONS, None, cache=cache)
    assert cache.is_valid()  # the dataset built it
    stats = compute_normalization(RawFeatures(dataset))
    extractor = ASTFeatureExtractor(max_length=48, do_normalize=False)
    values = np.concatenate(
        [
            extractor(soundfile.read(p, dtype="float32")[0], sampling_rate=RATE)["input_values"][0]
            for p in split
        ]
    ).astype(np.float64)
    assert stats.mean == pytest.approx(values.mean(), abs=2e-3)  # float16 storage
    assert stats.std == pytest.approx(values.std(), abs=2e-3)


def test_non_finite_row_in_a_complete_cache_names_the_file(tmp_path: Path, paths: list[Path]):
    cache = FeatureCache(tmp_path / "cache", paths, OPTIONS)
    cache.build()
    damaged = np.load(cache.array_path, mmap_mode="r+")
    damaged[2, 5, 7] = np.nan  # e.g. a bit flip in the exponent
    damaged.flush()
    del damaged
    reopened = FeatureCache(tmp_path / "cache", paths, OPTIONS)
    reopened.features(paths[1])  # other rows are still served
    with pytest.raises(AudioError, match="non-finite values") as info:
        reopened.features(reopened.paths[2])
    assert str(cache.array_path) in str(info.value) and reopened.paths[2] in str(info.value)


@pytest.mark.parametrize(
    "augmentation",
    [
        {},
        {"train": True},
        {"train": True, "spec_augment": SpecAugment(time_mask=8), "mixup": Mixup(rate=0.5)},
    ],
    ids=["evaluation", "training", "augmented"],
)
def test_batches_read_at_once_equal_the_items_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, augmentation: dict
):
    # A DataLoader fetches each batch with ClipDataset.__getitems__ (one read of the cache
    # when nothing is drawn); the batches are those of the items one by one, and of the
    # Kaldi reference normalised.
    paths = _write_clips(tmp_path / "audio", 5)
    cache = FeatureCache(tmp_path / "cache", paths, OPTIONS, progress=False)
    clips = [Clip(path=p, label=i % 3, clip_id=p.stem) for i, p in enumerate(paths)]
    dataset = ClipDataset(clips, 3, OPTIONS, AUDIOSET_NORMALIZATION, cache=cache, **augmentation)
    references = [_reference(path, OPTIONS) for path in paths]
    _forbid_decoding(monkeypatch)
    order = [3, 0, 4, 1, 2]
    for collate in (collate_clips, default_collate):  # the module's, and a user's own loader
        loader = DataLoader(dataset, batch_size=2, sampler=order, collate_fn=collate)
        batches = list(loader)
        assert [len(b["clip_id"]) for b in batches] == [2, 2, 1]
        for batch, indices in zip(batches, [order[0:2], order[2:4], order[4:]]):
            one_by_one = default_collate([dataset[i] for i in indices])
            assert batch.keys() == one_by_one.keys()
            assert batch["clip_id"] == one_by_one["clip_id"] == [clips[i].clip_id for i in indices]
            for key in ("features", "target", "num_frames"):
                assert batch[key].dtype == one_by_one[key].dtype
                assert torch.equal(batch[key], one_by_one[key]), key
            if not augmentation.get("mixup"):
                reference = torch.stack([references[i] for i in indices])
                torch.testing.assert_close(
                    batch["features"],
                    AUDIOSET_NORMALIZATION.apply(reference),
                    atol=2e-2 / (2 * AUDIOSET_NORMALIZATION.std),  # float16 storage
                    rtol=0,
                )
                assert batch["target"].tolist() == [i % 3 for i in indices]


def test_non_finite_row_in_a_batch_read_names_the_file(tmp_path: Path, paths: list[Path]):
    cache = FeatureCache(tmp_path / "cache", paths, OPTIONS)
    cache.build()
    damaged = np.load(cache.array_path, mmap_mode="r+")
    damaged[2, 0, 0] = np.inf
    damaged.flush()
    del damaged
    reopened = FeatureCache(tmp_path / "cache", paths, OPTIONS)
    clips = [Clip(path=p, label=0, clip_id=Path(p).stem) for p in reopened.paths]
    dataset = ClipDataset(clips, 1, OPTIONS, None, cache=reopened)
    assert len(dataset.__getitems__([0, 1, 3])) == 3
    with pytest.raises(AudioError, match="non-finite values") as info:
        dataset.__getitems__([1, 2, 3])
    assert reopened.paths[2] in str(info.value) and reopened.paths[1] not in str(info.value)


def test_huge_finite_values_are_not_reported_as_damage(tmp_path: Path, paths: list[Path]):
    # the batch read checks a sum first; one that overflows is not a non-finite entry
    cache = FeatureCache(tmp_path / "cache", paths, OPTIONS, dtype="float32")
    cache.build()
    edited = np.load(cache.array_path, mmap_mode="r+")
    edited[1, :2, 0] = 3e38
    edited.flush()
    del edited
    reopened = FeatureCache(tmp_path / "cache", paths, OPTIONS, dtype="float32")
    features, _ = reopened.read([0, 1, 2])
    assert torch.isinf(features.sum()) and torch.isfinite(features).all()
    assert features[1, 0, 0] == pytest.approx(3e38, rel=1e-6)


def test_rebuild_after_files_changed_removes_the_stale_cache(tmp_path: Path, paths: list[Path]):
    cache_dir = tmp_path / "cache"
    old = FeatureCache(cache_dir, paths, OPTIONS)
    old.build()
    other_settings = FeatureCache(cache_dir, paths, dataclasses.replace(OPTIONS, num_mel_bins=64))
    other_settings.build()
    stat = paths[0].stat()
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed
    new = FeatureCache(cache_dir, paths, OPTIONS)
    new.build()
    assert new.key != old.key
    assert not old.array_path.exists() and not old.manifest_path.exists()
    assert other_settings.is_valid()  # another configuration's cache is kept
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(
        p.name
        for p in (
            new.array_path,
            new.manifest_path,
            other_settings.array_path,
            other_settings.manifest_path,
        )
    )
