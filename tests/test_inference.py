"""Using a trained model: the pipeline stored in checkpoints, load_trained_model, classify."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional
from console_runs import console_status
from tiny_runs import synthetic_dataset, tiny_run_config

from add_lightning.checkpoint import PIPELINE_KEY
from add_lightning.cli import main
from add_lightning.data import FbankOptions, Normalization, compute_fbank, load_audio
from add_lightning.data.datasets.synthetic import synthetic_class_names
from add_lightning.data.fbank import compute_fbank_frames
from add_lightning.inference import TrainedModel, load_trained_model
from add_lightning.lightning_cli import AddLightningCLI

# Synthetic data (3 classes x 4 clips of 0.5 s, 2 folds; fold 2 trains, fold 1 tests), a
# one-layer random AST, one epoch.
FEATURES = FbankOptions(num_mel_bins=32, target_frames=48)


@pytest.fixture(scope="module")
def trained(tiny_fit_run) -> dict[str, Path]:
    """The shared one-epoch fit (tests/conftest.py ``tiny_fit_run``): read-only."""
    return tiny_fit_run


def _training_files(root: Path) -> list[Path]:
    # ESC-50 layout under a folder named after the settings; fold 2 is the training fold
    paths = sorted(root.glob("*/audio/2-*.wav"))
    assert len(paths) == 6
    return paths


def _statistics(paths: list[Path]) -> tuple[float, float]:
    """Reference: float64 mean and population std of every padded fbank value of the files."""
    values = np.concatenate(
        [compute_fbank(load_audio(path), FEATURES).double().numpy().ravel() for path in paths]
    )
    return float(values.mean()), float(values.std())


def test_checkpoint_stores_the_feature_pipeline_of_training(trained):
    checkpoint = torch.load(trained["checkpoint"], weights_only=True)
    pipeline = checkpoint[PIPELINE_KEY]
    assert pipeline["kind"] == "fbank"
    assert FbankOptions(**pipeline["features"]) == FEATURES
    assert pipeline["class_names"] == synthetic_class_names(3)
    mean, std = _statistics(_training_files(trained["root"]))
    # training read the fbanks from the float16 cache: equal to about 1e-3
    assert pipeline["normalization"]["mean"] == pytest.approx(mean, rel=1e-3)
    assert pipeline["normalization"]["std"] == pytest.approx(std, rel=1e-3)


def _test_metrics(config: Path, checkpoint: Path, run: Path, *extra: str) -> dict[str, float]:
    args = ["test", "--config", str(config), "--trainer.default_root_dir", str(run)]
    cli = AddLightningCLI(args=[*args, "--ckpt_path", str(checkpoint), *extra])
    return {key: float(value) for key, value in cli.trainer.callback_metrics.items()}


def test_test_with_a_checkpoint_ignores_training_files_changed_after_fit(trained, tmp_path, caplog):
    # a copy of the data, so that the other tests keep the original files
    root = tmp_path / "synthetic"
    config = tmp_path / "config.yaml"
    config.write_text(tiny_run_config(synthetic_dataset(root), tmp_path / "cache"))
    shutil.copytree(trained["root"], root)
    before = _test_metrics(config, trained["checkpoint"], tmp_path / "before")
    assert math.isfinite(before["test/loss"])

    rng = np.random.default_rng(0)
    for path in _training_files(root):  # louder, with more noise: other statistics
        samples, rate = soundfile.read(path, dtype="float32")
        noisy = 3 * samples + 0.05 * rng.standard_normal(samples.shape).astype(np.float32)
        soundfile.write(path, np.clip(noisy, -1, 1), rate, subtype="PCM_16")
    stored = torch.load(trained["checkpoint"], weights_only=True)[PIPELINE_KEY]
    stored_mean = stored["normalization"]["mean"]
    changed_mean, _ = _statistics(_training_files(root))
    assert abs(changed_mean - stored_mean) > 0.5  # recomputed statistics would differ

    after = _test_metrics(config, trained["checkpoint"], tmp_path / "after")
    assert after["test/loss"] == before["test/loss"]
    assert after["test/acc"] == before["test/acc"]

    # feature settings contradicting the checkpoint's: the checkpoint's are used, and said so
    with caplog.at_level(logging.WARNING):
        other = _test_metrics(
            config,
            trained["checkpoint"],
            tmp_path / "other",
            "--data.init_args.features.target_frames",
            "64",
        )
    assert "target_frames 48 (config 64)" in caplog.text
    assert other["test/loss"] == before["test/loss"]


def test_load_trained_model(trained):
    loaded = load_trained_model(trained["checkpoint"])
    assert isinstance(loaded, TrainedModel)
    assert not loaded.model.training
    assert loaded.pipeline.features == FEATURES
    assert loaded.class_names == synthetic_class_names(3)
    stored = torch.load(trained["checkpoint"], weights_only=True)
    pipeline = stored[PIPELINE_KEY]
    assert loaded.pipeline.normalization == Normalization(**pipeline["normalization"])
    weights = loaded.model.state_dict()
    assert weights.keys() == stored["state_dict"].keys()
    for name, value in stored["state_dict"].items():
        assert torch.equal(weights[name], value), name


def test_load_trained_model_errors(trained, tmp_path):
    old = torch.load(trained["checkpoint"], weights_only=True)
    del old[PIPELINE_KEY]  # as written before the pipeline was stored
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match=r"old\.ckpt holds no feature pipeline"):
        load_trained_model(tmp_path / "old.ckpt")
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt does not exist"):
        load_trained_model(tmp_path / "missing.ckpt")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"text\.ckpt is not a PyTorch checkpoint"):
        load_trained_model(tmp_path / "text.ckpt")


def _reference_probabilities(
    model: TrainedModel, fbank: torch.Tensor, starts: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean softmax and mean embedding of the windows ``fbank[s : s + 48]`` (padded to 48)."""
    probabilities, embeddings = [], []
    for start in starts:
        window = fbank[start : start + 48]
        window = torch.nn.functional.pad(window, (0, 0, 0, 48 - window.shape[0]))
        features = model.pipeline.normalization.apply(window).unsqueeze(0)
        with torch.no_grad():
            embedding = model.model.embed(features)
            probabilities.append(model.model(features).softmax(-1)[0])
        embeddings.append(embedding[0])
    return torch.stack(probabilities).mean(0), torch.stack(embeddings).mean(0)


def _tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(1)
    mono = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.standard_normal(t.size)
    return np.stack([mono * (c + 1) / channels for c in range(channels)]).astype(np.float32)


def test_classify_a_short_clip_equals_the_model_on_its_padded_features(trained):
    model = load_trained_model(trained["checkpoint"])
    waveform = torch.from_numpy(_tone(0.3, 16000)[0])  # 28 frames: padded to 48 as in training
    scores = model.classify(waveform, 16000)
    expected, embedding = _reference_probabilities(model, compute_fbank(waveform, FEATURES), [0])
    assert scores.num_windows == 1
    torch.testing.assert_close(scores.probabilities, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores.embedding, embedding, rtol=1e-5, atol=1e-5)
    assert float(scores.probabilities.sum()) == pytest.approx(1.0, abs=1e-6)


def test_classify_a_long_clip_averages_its_windows(trained):
    model = load_trained_model(trained["checkpoint"])
    waveform = torch.from_numpy(_tone(1.5, 16000)[0])  # 148 frames
    fbank = compute_fbank_frames(waveform, FEATURES)
    assert fbank.shape[0] == 148
    # windows of 48 frames every 24 frames, and one more ending at the last frame
    starts = [0, 24, 48, 72, 96, 100]
    expected, embedding = _reference_probabilities(model, fbank, starts)
    scores = model.classify(waveform, 16000)
    assert scores.num_windows == len(starts)
    torch.testing.assert_close(scores.probabilities, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores.embedding, embedding, rtol=1e-5, atol=1e-5)
    # another hop: windows 0, 50, 100
    expected, _ = _reference_probabilities(model, fbank, [0, 50, 100])
    torch.testing.assert_close(
        model.classify(waveform, 16000, hop_frames=50).probabilities, expected
    )


def test_classify_a_stereo_clip_at_another_rate(trained):
    model = load_trained_model(trained["checkpoint"])
    stereo = torch.from_numpy(_tone(0.4, 44100, channels=2))
    mono = torchaudio.functional.resample(stereo.mean(0), 44100, 16000)
    expected, _ = _reference_probabilities(model, compute_fbank(mono, FEATURES), [0])
    torch.testing.assert_close(model.classify(stereo, 44100).probabilities, expected)
    with pytest.raises(ValueError, match=r"waveform.*\[channels, num_samples\]"):
        model.classify(torch.zeros(1, 2, 100), 16000)


# ----------------------------------------------------------------- add-lightning classify


def _reference_file(model: TrainedModel, path: Path, starts: list[int]) -> tuple:
    """Mean probabilities and embedding of a file, read with soundfile and torchaudio here."""
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = torch.from_numpy(samples.mean(axis=1))
    if rate != 16000:
        mono = torchaudio.functional.resample(mono, rate, 16000)
    return _reference_probabilities(model, compute_fbank_frames(mono, FEATURES), starts)


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory) -> dict[str, Path]:
    """A short clip, a long one (148 frames: windows 0, 24, 48, 72, 96, 100), a 44.1 kHz
    stereo one in a folder, a broken file, and a CSV listing the first two by relative path."""
    folder = tmp_path_factory.mktemp("audio")
    (folder / "stereo").mkdir()
    files = {
        "short": folder / "short.wav",
        "long": folder / "long.flac",
        "stereo": folder / "stereo" / "stereo.wav",
        "broken": folder / "broken.wav",
        "csv": folder / "list.csv",
    }
    soundfile.write(files["short"], _tone(0.3, 16000)[0], 16000)
    soundfile.write(files["long"], _tone(1.5, 16000)[0], 16000)
    soundfile.write(files["stereo"], _tone(0.4, 44100, channels=2).T, 44100)
    files["broken"].write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    files["csv"].write_text("path,note\nshort.wav,a\nlong.flac,b\n")
    return files


REFERENCE_STARTS = {"short": [0], "long": [0, 24, 48, 72, 96, 100], "stereo": [0]}


def test_classify_files_folders_and_csv_with_a_broken_file(trained, audio_files, tmp_path, capsys):
    model = load_trained_model(trained["checkpoint"])
    inputs = [audio_files["csv"], audio_files["broken"], audio_files["stereo"].parent]
    status = main(
        [
            "classify",
            "--ckpt_path",
            str(trained["checkpoint"]),
            *map(str, inputs),
            "--top_k",
            "2",
            "--batch_size",
            "4",  # the long clip's 6 windows span two forward passes, shared with other files
            "--output",
            str(tmp_path / "results.csv"),
            "--embeddings",
            str(tmp_path / "embeddings.npz"),
            "--progress",
            "true",
        ]
    )
    captured = capsys.readouterr()
    assert status == 1  # one file failed, the others are classified
    assert f"skipped: Could not decode audio file {audio_files['broken']}" in captured.err
    assert "classify: 100%" in captured.err and "4/4" in captured.err  # the progress bar
    order = ["short", "long", "stereo"]
    lines = captured.out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(audio_files[k]) for k in order]

    with (tmp_path / "results.csv").open() as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    assert list(rows) == [str(audio_files[k]) for k in ("short", "long", "broken", "stereo")]
    assert "Could not decode" in rows[str(audio_files["broken"])]["error"]
    arrays = np.load(tmp_path / "embeddings.npz")
    assert list(arrays["paths"]) == [str(audio_files[k]) for k in order]
    assert list(arrays["class_names"]) == model.class_names
    for row_index, key in enumerate(order):
        expected, embedding = _reference_file(model, audio_files[key], REFERENCE_STARTS[key])
        ranked = expected.argsort(descending=True)[:2]
        row = rows[str(audio_files[key])]
        assert int(row["num_windows"]) == len(REFERENCE_STARTS[key])
        assert [row["label_1"], row["label_2"]] == [model.class_names[int(i)] for i in ranked]
        got = [float(row["probability_1"]), float(row["probability_2"])]
        np.testing.assert_allclose(got, expected[ranked].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(arrays["probabilities"][row_index], expected, atol=1e-6)
        np.testing.assert_allclose(arrays["embeddings"][row_index], embedding, atol=1e-5)
        fields = lines[row_index].split("\t")[1:]
        assert fields[0] == f"{row['label_1']} {float(row['probability_1']):.4f}"


def test_classify_through_the_console_script(trained, audio_files, tmp_path, capsys):
    output = tmp_path / "results.json"
    arguments = [str(audio_files["short"]), str(audio_files["stereo"]), "--output", str(output)]
    classify = ["classify", "--ckpt_path", str(trained["checkpoint"])]
    assert console_status([*classify, *arguments]) == 0
    done = capsys.readouterr()
    assert "classified 2 of 2 files" in done.err
    assert len(done.out.strip().splitlines()) == 2
    results = json.loads(output.read_text())
    model = load_trained_model(trained["checkpoint"])
    assert results["class_names"] == model.class_names
    for clip, key in zip(results["clips"], ("short", "stereo")):
        expected, _ = _reference_file(model, audio_files[key], REFERENCE_STARTS[key])
        assert clip["path"] == str(audio_files[key]) and clip["error"] is None
        got = [clip["probabilities"][name] for name in model.class_names]
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)
        assert len(clip["top_k"]) == 3  # --top_k 5 capped at the 3 classes
        assert clip["top_k"][0]["label"] == model.class_names[int(expected.argmax())]

    # bad arguments: one line naming the argument, exit status 1, nothing written
    wrong_output = ["--output", str(tmp_path / "results.txt")]
    assert console_status([*classify, "x.wav", *wrong_output]) == 1
    bad = capsys.readouterr()
    assert "Expected `--output` to end with .csv or .json" in bad.err
    assert "Traceback" not in bad.err
    assert not (tmp_path / "results.txt").exists()


def test_classify_refuses_a_checkpoint_without_the_pipeline(trained, audio_files, tmp_path):
    old = torch.load(trained["checkpoint"], weights_only=True)
    del old[PIPELINE_KEY]
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match=r"old\.ckpt holds no feature pipeline"):
        main(["classify", "--ckpt_path", str(tmp_path / "old.ckpt"), str(audio_files["short"])])
    with pytest.raises(ValueError, match=r"holds no audio file"):
        main(["classify", "--ckpt_path", str(trained["checkpoint"]), str(tmp_path)])
