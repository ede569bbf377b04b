"""Hugging Face datasets as a source: small datasets built with ``Dataset.from_dict`` +
``cast_column(Audio())`` and ``save_to_disk``; no hub access."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from reference_features import reference_fbank
from tiny_runs import tiny_run_config

from add_lightning import cli
from add_lightning.data import AudioDataModule, FbankOptions, HuggingFaceDataset, load_audio

RATE = 16000
NAMES = ["dog", "cat", "bird"]  # ClassLabel order; our ids follow the sorted names


def write_wav(path: Path, seed: int, seconds: float = 0.3, rate: int = RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.random.default_rng(seed).uniform(-0.5, 0.5, round(seconds * rate))
    soundfile.write(path, samples.astype(np.float32), rate, subtype="PCM_16")
    return path


def make_folded(folder: Path, per_class_fold: int = 2, seed: int = 0) -> list[dict]:
    """3 ClassLabel classes x 2 folds x ``per_class_fold`` clips; returns the rows."""
    rows = []
    for label in range(len(NAMES)):
        for fold in (1, 2):
            for k in range(per_class_fold):
                path = write_wav(folder / f"src/{label}_{fold}_{k}.wav", seed=seed + len(rows))
                rows.append({"audio": str(path), "label": label, "fold": fold})
    save_folded(rows, folder / "saved")
    return rows


def save_folded(rows: list[dict], directory: Path) -> None:
    """Saves the rows of :func:`make_folded` (audio file, ClassLabel id, fold) to ``directory``."""
    features = datasets.Features(
        {
            "audio": datasets.Value("string"),
            "label": datasets.ClassLabel(names=NAMES),
            "fold": datasets.Value("int64"),
        }
    )
    table = {key: [row[key] for row in rows] for key in ("audio", "label", "fold")}
    dataset = datasets.Dataset.from_dict(table, features=features)
    dataset.cast_column("audio", datasets.Audio()).save_to_disk(str(directory))


def test_folded_dataset_index_and_exported_audio(tmp_path: Path) -> None:
    rows = make_folded(tmp_path)
    index = HuggingFaceDataset(
        str(tmp_path / "saved"), root=str(tmp_path / "export"), fold_column="fold"
    )
    assert index.class_names == ["bird", "cat", "dog"]  # sorted, not ClassLabel's order
    assert index.folds == (1, 2)
    index.prepare()
    test = index.clips("test", fold=2)
    train = index.clips("train", fold=2)
    assert len(test) == len(train) == 6
    for clip in test + train:
        row = rows[int(clip.clip_id)]
        assert clip.label == ["bird", "cat", "dog"].index(NAMES[row["label"]])
        assert (clip in test) == (row["fold"] == 2)
        # the Audio column's bytes, written as they are: the original file
        assert Path(clip.path).read_bytes() == Path(row["audio"]).read_bytes()
        assert Path(clip.path).is_relative_to(index.export_dir)
    original, _ = soundfile.read(rows[0]["audio"], dtype="float32")
    assert torch.equal(load_audio(index.clips("train", fold=2)[0].path), torch.from_numpy(original))
    assert not list((tmp_path / "export").glob(".*"))  # no temporary folder left


def test_dataset_dict_splits_string_labels_rate_and_subset(tmp_path: Path) -> None:
    splits = {}
    for s, split in enumerate(("train", "validation", "test")):
        paths = [write_wav(tmp_path / f"{split}{k}.wav", 10 * s + k, rate=8000) for k in range(4)]
        table = {"file": [str(p) for p in paths], "word": ["yes", "no", " yes", "up"]}
        splits[split] = datasets.Dataset.from_dict(table).cast_column("file", datasets.Audio())
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    index = HuggingFaceDataset(
        str(tmp_path / "saved"),
        root=str(tmp_path / "export"),
        audio_column="file",
        label_column="word",
        classes=["yes", "up"],
    )
    assert index.folds == ()
    assert index.class_names == ["up", "yes"]
    for split in ("train", "validation", "test"):
        clips = index.clips(split)
        assert [(c.clip_id, c.label) for c in clips] == [
            (f"{split}/000000", 1),
            (f"{split}/000002", 1),
            (f"{split}/000003", 0),
        ]
    clip = index.clips("test")[0]
    samples, rate = soundfile.read(clip.path, dtype="float32")
    assert rate == 8000  # stored at the dataset's rate, resampled by the pipeline
    resampled = torchaudio.functional.resample(torch.from_numpy(samples), 8000, RATE)
    assert torch.allclose(load_audio(clip.path, RATE), resampled)


def test_errors_name_the_argument(tmp_path: Path) -> None:
    make_folded(tmp_path)
    saved = str(tmp_path / "saved")
    with pytest.raises(FileNotFoundError, match=r"save_to_disk.*does not exist"):
        _ = HuggingFaceDataset(str(tmp_path / "absent"), root=str(tmp_path)).class_names
    with pytest.raises(OSError, match=r"HF_HUB_OFFLINE is set.*save_to_disk\(DIR\)"):
        _ = HuggingFaceDataset("nobody/no-such-dataset", root=str(tmp_path)).class_names
    with pytest.raises(ValueError, match=r"`label_column`.*'category' is not among its columns"):
        _ = HuggingFaceDataset(saved, root=str(tmp_path), label_column="category").class_names
    with pytest.raises(ValueError, match=r"column `fold` .* to be an Audio column"):
        _ = HuggingFaceDataset(saved, root=str(tmp_path), audio_column="fold").class_names
    with pytest.raises(ValueError, match="at most one of"):
        HuggingFaceDataset(saved, root=str(tmp_path), fold_column="fold", split_column="fold")
    other = datasets.Dataset.from_dict({"audio": [str(tmp_path / "src/0_1_0.wav")], "label": ["a"]})
    other = other.cast_column("audio", datasets.Audio())
    datasets.DatasetDict({"holdout": other}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(ValueError, match=r"split 'holdout'.*expected a split among"):
        HuggingFaceDataset(str(tmp_path / "dict"), root=str(tmp_path / "e")).prepare()


def test_local_audiofolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A class-folder layout read by datasets' audiofolder builder, or a clear error without
    torchcodec (which datasets' audio encoding needs)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    for c, name in enumerate(("dog", "cat")):
        for k in range(2):
            write_wav(tmp_path / "folder" / name / f"{k}.wav", seed=10 * c + k)
    index = HuggingFaceDataset(str(tmp_path / "folder"), root=str(tmp_path / "export"))
    try:
        import torchcodec  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"folder.*needs torchcodec.*FolderDataset"):
            _ = index.class_names
    else:
        assert index.class_names == ["cat", "dog"]


def test_undecodable_audio_names_the_row(tmp_path: Path) -> None:
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    table = {"audio": [str(write_wav(tmp_path / "ok.wav", 0)), str(tmp_path / "bad.wav")]}
    table["label"] = ["a", "b"]
    dataset = datasets.Dataset.from_dict(table).cast_column("audio", datasets.Audio())
    dataset.save_to_disk(str(tmp_path / "saved"))
    index = HuggingFaceDataset(str(tmp_path / "saved"), root=str(tmp_path / "export"))
    with pytest.raises(ValueError, match=r"row 1: its audio .* libsndfile cannot decode"):
        index.prepare()
    assert not (tmp_path / "export").exists() or not list((tmp_path / "export").iterdir())


# ------------------------------------------------------------------------------ end to end


def test_cv_trains_on_a_saved_dataset_and_the_cache_follows_it(tmp_path: Path, caplog) -> None:
    rows = make_folded(tmp_path)
    cache = tmp_path / "cache"
    config = tmp_path / "hf.yaml"
    dataset = {
        "class_path": "add_lightning.data.HuggingFaceDataset",
        "init_args": {
            "path": str(tmp_path / "saved"),
            "root": str(tmp_path / "export"),
            "fold_column": "fold",
        },
    }
    text = tiny_run_config(dataset, cache, frames=32, add_loss=True, deterministic=True)
    config.write_text(text)
    output = tmp_path / "cv"
    argv = ["cv", "--config", str(config), "--folds", "1", "2", "--seeds", "0"]
    assert cli.main([*argv, "--output", str(output)]) == 0
    for fold in (1, 2):
        unit = output / f"fold{fold}_seed0"
        metrics = json.loads((unit / "test_metrics.json").read_text())["metrics"]
        assert 0.0 <= metrics["test/acc"] <= 1.0
        embeddings = np.load(unit / "test_embeddings.npz")
        assert list(embeddings["class_names"]) == ["bird", "cat", "dog"]
        assert len(embeddings["targets"]) == 6
    assert (output / "results.csv").is_file()
    first_caches = sorted(cache.glob("fbank-*.npy"))
    assert len(first_caches) == 1
    stamp = first_caches[0].stat().st_mtime_ns

    def prepared() -> AudioDataModule:
        features = FbankOptions(num_mel_bins=32, target_frames=32)
        index = HuggingFaceDataset(
            str(tmp_path / "saved"), root=str(tmp_path / "export"), fold_column="fold"
        )
        module = AudioDataModule(index, fold=1, features=features, cache_dir=str(cache))
        module.prepare_data()
        return module

    with caplog.at_level(logging.INFO):  # the same dataset: the cache is reused
        module = prepared()
    assert "Built feature cache" not in caplog.text and "Exported" not in caplog.text
    assert sorted(cache.glob("fbank-*.npy")) == first_caches
    assert first_caches[0].stat().st_mtime_ns == stamp

    # the dataset changes (clip 0 gets other audio): new export, new cache of the new audio
    old_export = HuggingFaceDataset(
        str(tmp_path / "saved"), root=str(tmp_path / "export"), fold_column="fold"
    )
    old_export_dir = old_export.export_dir
    replacement = write_wav(tmp_path / "new0.wav", seed=1234)
    rows[0]["audio"] = str(replacement)
    save_folded(rows, tmp_path / "saved2")
    shutil.rmtree(tmp_path / "saved")
    (tmp_path / "saved2").rename(tmp_path / "saved")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        module = prepared()
    assert "Built feature cache" in caplog.text
    caches = sorted(cache.glob("fbank-*.npy"))
    assert len(caches) == 2 and first_caches[0] in caches
    assert not old_export_dir.exists()  # the older version's export is removed
    clip = next(c for c in module.dataset.clips("train", fold=2) if c.clip_id == "000000")
    assert Path(clip.path).read_bytes() == replacement.read_bytes()
    cached = module._feature_cache().features(clip.path)
    expected = reference_fbank(replacement, module.features)
    assert torch.allclose(cached, expected, atol=2e-2, rtol=2e-3)  # float16 cache


def test_a_new_version_replaces_only_the_export_read_with_the_same_columns(tmp_path: Path) -> None:
    make_folded(tmp_path / "v1")
    saved, export = str(tmp_path / "saved"), str(tmp_path / "export")
    shutil.move(tmp_path / "v1" / "saved", saved)
    folded = HuggingFaceDataset(saved, root=export, fold_column="fold")
    plain = HuggingFaceDataset(saved, root=export)  # every clip a training clip
    folded.prepare()
    plain.prepare()
    old_folded, old_plain = folded.export_dir, plain.export_dir
    assert old_folded != old_plain and len(plain.clips("train")) == 12
    make_folded(tmp_path / "v2", seed=100)  # new audio: a new fingerprint
    shutil.rmtree(saved)
    shutil.move(tmp_path / "v2" / "saved", saved)
    new_folded = HuggingFaceDataset(saved, root=export, fold_column="fold")
    new_folded.prepare()
    assert new_folded.export_dir != old_folded
    assert not old_folded.exists() and (old_plain / "index.json").is_file()


def make_hf_esc50(folder: Path) -> Path:
    """A saved dataset with the columns of configs/data/huggingface.yaml: audio, category, fold."""
    paths = [write_wav(folder / f"src/{k}.wav", seed=k) for k in range(4)]
    table = {"audio": [str(p) for p in paths], "category": ["dog", "cat"] * 2, "fold": [1, 1, 2, 2]}
    dataset = datasets.Dataset.from_dict(table).cast_column("audio", datasets.Audio())
    dataset.save_to_disk(str(folder / "saved"))
    return folder / "saved"
