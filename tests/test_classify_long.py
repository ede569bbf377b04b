"""classify on long recordings: silent windows left out, silent files, pooling, per-window rows.

One tiny AST is trained on two classes of 0.5-s clips over the same faint room noise (white,
-60 dBFS): ``tone``, a 0.3-s 1 kHz burst at -9 dBFS, and ``quiet``, the noise alone. The
constructed files are a single take (a burst in 0.5 s of noise), the same take repeated 10
times with 1.5-s pauses of that noise (20 s: what the model sees between takes is ``quiet``),
and 3 s of digital silence. Every burst starts and ends on a multiple of the 160-sample frame
shift, so each 25-ms frame either holds at least 80 samples of a burst (level >= -16 dBFS) or
none (-60 dBFS): which windows are silent follows from their sample ranges alone.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from tiny_runs import tiny_run_config

from add_lightning.classify import build_parser
from add_lightning.cli import main
from add_lightning.data.pipeline import WaveformPipeline
from add_lightning.inference import (
    SILENCE_BELOW_PEAK_DB,
    SILENCE_FLOOR_DBFS,
    TrainedModel,
    load_trained_model,
)

RATE = 16000
NOISE_STD = 1e-3  # -60 dBFS
TONE_AMPLITUDE = 0.5  # RMS 0.354: -9.03 dBFS
BURST = 4800  # 0.3 s: 30 frame shifts
TAKE = 8000  # 0.5 s
PERIOD = 32000  # a take and a 1.5-s pause
TAKES = 10
BURST_STARTS = [1600 + PERIOD * k for k in range(TAKES)]  # 0.1 s into each take
# 48 frames of 25 ms every 10 ms: a window starting at frame s covers samples
# [160 s, 160 s + 47 * 160 + 400)
SHIFT, FRAME, TARGET, HOP = 160, 400, 48, 24


def _noise(num_samples: int, seed: int) -> np.ndarray:
    return NOISE_STD * np.random.default_rng(seed).standard_normal(num_samples)


def _burst(rng: np.random.Generator) -> np.ndarray:
    frequency = 1000 * rng.uniform(0.97, 1.03)
    return TONE_AMPLITUDE * np.sin(2 * np.pi * frequency * np.arange(BURST) / RATE)


def _write(path: Path, samples: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples.astype(np.float32), RATE, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The last checkpoint of `add-lightning fit` on the two classes (12 clips each)."""
    folder = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(0)
    for k in range(12):
        tone = _noise(TAKE, seed=100 + k)
        onset = SHIFT * int(rng.integers(0, (TAKE - BURST) // SHIFT + 1))
        tone[onset : onset + BURST] += _burst(rng)
        _write(folder / "data" / "tone" / f"{k}.wav", tone)
        _write(folder / "data" / "quiet" / f"{k}.wav", _noise(TAKE, seed=200 + k))
    dataset = {
        "class_path": "add_lightning.data.FolderDataset",
        "init_args": {"root": str(folder / "data"), "num_folds": 2},
    }
    config = folder / "config.yaml"
    config.write_text(tiny_run_config(dataset, lr=1e-3, max_epochs=4))
    run = folder / "run"
    assert main(["fit", "--config", str(config), "--trainer.default_root_dir", str(run)]) == 0
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> dict[str, Path]:
    """The single take, the 20-s file of 10 takes, 3 s of digital silence, 3 s of noise."""
    folder = tmp_path_factory.mktemp("audio")
    long = _noise(TAKES * PERIOD, seed=1)
    rng = np.random.default_rng(1)
    for start in BURST_STARTS:
        long[start : start + BURST] += _burst(rng)
    return {
        "take": _write(folder / "take.wav", long[:TAKE]),
        "long": _write(folder / "long.wav", long),
        "silence": _write(folder / "silence.wav", np.zeros(3 * RATE)),
        "noise": _write(folder / "noise.wav", _noise(3 * RATE, seed=2)),
    }


def _classify(checkpoint: Path, *arguments: str) -> int:
    return main(["classify", "--ckpt_path", str(checkpoint), "--top_k", "2", *arguments])


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _expected_windows() -> tuple[list[int], list[bool]]:
    """Hand-computed windows of the 20-s file: first frames and silent flags."""
    num_frames = 1 + (TAKES * PERIOD - FRAME) // SHIFT  # 1998
    last = num_frames - TARGET
    starts = list(range(0, last + 1, HOP))
    if starts[-1] != last:
        starts.append(last)
    silent = []
    for start in starts:
        first, end = SHIFT * start, SHIFT * (start + TARGET - 1) + FRAME
        silent.append(not any(first < b + BURST and b < end for b in BURST_STARTS))
    return starts, silent


def test_a_long_file_of_takes_with_pauses_gets_the_label_of_one_take(
    checkpoint, audio, tmp_path, capsys
):
    results = tmp_path / "results.csv"
    files = [str(audio["take"]), str(audio["long"])]
    assert _classify(checkpoint, *files, "--output", str(results)) == 0
    captured = capsys.readouterr()
    take, long = _csv(results)
    assert take["label_1"] == "tone" and float(take["probability_1"]) > 0.5  # the model works
    assert long["label_1"] == take["label_1"]  # the pauses do not outvote the takes
    assert take["status"] == long["status"] == "classified"
    starts, silent = _expected_windows()
    assert int(long["num_windows"]) == len(starts) == 83
    assert int(long["num_silent_windows"]) == sum(silent) == 54
    lines = captured.out.splitlines()
    assert [line.split("\t")[0] for line in lines] == files
    assert lines[1].split("\t")[1] == f"tone {float(long['probability_1']):.4f}"
    assert "classified 2 of 2 files" in captured.err
    rule = f"more than {SILENCE_BELOW_PEAK_DB:g} dB below their file's loudest"
    assert f"54 of 84 windows left out as silent ({rule}" in captured.err


def test_a_silent_file_gets_no_label(checkpoint, audio, tmp_path, capsys):
    results = tmp_path / "results.json"
    files = [str(audio["silence"]), str(audio["take"])]
    assert _classify(checkpoint, *files, "--output", str(results)) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == f"{audio['silence']}\t(silent)"
    assert captured.out.splitlines()[1].startswith(f"{audio['take']}\ttone ")
    assert "classified 1 of 2 files; 1 silent throughout (no label)" in captured.err
    written = json.loads(results.read_text())
    assert written["pooling"] == "mean"
    assert written["silence"] == {
        "below_peak_db": SILENCE_BELOW_PEAK_DB,
        "floor_dbfs": SILENCE_FLOOR_DBFS,
    }
    silence = written["clips"][0]
    num_frames = 1 + (3 * RATE - FRAME) // SHIFT  # 298: windows 0, 24, ..., 240, 250
    assert silence == {
        "path": str(audio["silence"]),
        "status": "silent",
        "num_windows": len(range(0, num_frames - TARGET + 1, HOP)) + 1,
        "num_silent_windows": 12,
        "top_k": [],
        "probabilities": None,
        "error": None,
    }
    # the same in the CSV: no label, the status says why
    assert _classify(checkpoint, str(audio["silence"]), "--output", str(tmp_path / "r.csv")) == 0
    (row,) = _csv(tmp_path / "r.csv")
    assert (row["status"], row["label_1"], row["num_silent_windows"]) == ("silent", "", "12")


def test_room_noise_alone_is_not_silence(checkpoint, audio, capsys):
    """The rule is relative to the file: noise at -60 dBFS is above the -80 dBFS floor."""
    assert _classify(checkpoint, str(audio["noise"])) == 0
    assert capsys.readouterr().out.split("\t")[1].startswith("quiet ")


@pytest.mark.parametrize("output", ["windows.csv", "windows.json"])
def test_per_window_rows_give_times_levels_and_silent_flags(checkpoint, audio, tmp_path, output):
    path = tmp_path / output
    assert (
        _classify(checkpoint, str(audio["long"]), str(audio["take"]), "--windows", str(path)) == 0
    )
    if output.endswith(".json"):
        rows = json.loads(path.read_text())["windows"]
        assert all(len(row["top_k"]) == 2 for row in rows)
    else:
        rows = _csv(path)
        for row in rows:
            row["silent"] = {"True": True, "False": False}[row["silent"]]
            assert {row["label_1"], row["label_2"]} == {"quiet", "tone"}
    starts, silent = _expected_windows()
    long = [row for row in rows if row["path"] == str(audio["long"])]
    assert [int(row["window"]) for row in long] == list(range(len(starts)))
    np.testing.assert_allclose([float(row["start_s"]) for row in long], np.array(starts) / 100)
    ends = (np.array(starts) * SHIFT + (TARGET - 1) * SHIFT + FRAME) / RATE  # start + 0.495 s
    np.testing.assert_allclose([float(row["end_s"]) for row in long], ends)
    assert [row["silent"] for row in long] == silent
    levels = np.array([float(row["level_dbfs"]) for row in long])
    # reference: float64 RMS level of each 400-sample frame (its mean removed), max per window
    samples = soundfile.read(audio["long"], dtype="float64")[0]
    frames = np.lib.stride_tricks.sliding_window_view(samples, FRAME)[::SHIFT]
    frame_db = 10 * np.log10(frames.var(axis=1))
    np.testing.assert_allclose(
        levels, [frame_db[start : start + TARGET].max() for start in starts], atol=0.006
    )
    # which is, for a window holding a whole frame of tone, the tone's level (-9.03 dBFS; a
    # frame is no whole number of periods), and for one of noise alone, about -60 dBFS
    tone_db = 20 * np.log10(TONE_AMPLITUDE / np.sqrt(2))
    np.testing.assert_allclose(levels[~np.array(silent)].max(), tone_db, atol=0.1)
    assert np.all((levels[np.array(silent)] > -61) & (levels[np.array(silent)] < -55))
    # the single take (0.5 s, 48 frames and a few samples): one window covering it
    (take,) = [row for row in rows if row["path"] == str(audio["take"])]
    assert float(take["start_s"]) == 0
    assert float(take["end_s"]) == pytest.approx((47 * SHIFT + FRAME) / RATE)
    assert take["silent"] is False


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_pooling_of_the_windows_that_are_not_silent(checkpoint, audio, tmp_path, pooling):
    windows, results = tmp_path / "windows.json", tmp_path / "results.json"
    arguments = ["--windows", str(windows), "--output", str(results), "--pooling", pooling]
    assert _classify(checkpoint, str(audio["long"]), *arguments) == 0
    rows = json.loads(windows.read_text())["windows"]
    names = ["quiet", "tone"]
    probabilities = np.array(
        [
            [{e["label"]: e["probability"] for e in row["top_k"]}[name] for name in names]
            for row in rows
        ]
    )
    kept = ~np.array([row["silent"] for row in rows])
    expected = probabilities[kept].mean(0) if pooling == "mean" else probabilities[kept].max(0)
    (clip,) = json.loads(results.read_text())["clips"]
    got = [clip["probabilities"][name] for name in names]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert clip["top_k"][0]["label"] == names[int(np.argmax(expected))] == "tone"


def test_silence_db_null_keeps_every_window(checkpoint, audio, tmp_path):
    windows, results = tmp_path / "windows.json", tmp_path / "results.json"
    arguments = ["--silence_db", "null", "--windows", str(windows), "--output", str(results)]
    assert _classify(checkpoint, str(audio["long"]), str(audio["silence"]), *arguments) == 0
    written = json.loads(results.read_text())
    assert written["silence"] is None
    assert [clip["num_silent_windows"] for clip in written["clips"]] == [0, 0]
    assert [clip["status"] for clip in written["clips"]] == ["classified", "classified"]
    rows = [
        row
        for row in json.loads(windows.read_text())["windows"]
        if row["path"].endswith("long.wav")
    ]
    assert not any(row["silent"] for row in rows)
    tone = np.mean([{e["label"]: e["probability"] for e in row["top_k"]}["tone"] for row in rows])
    assert written["clips"][0]["probabilities"]["tone"] == pytest.approx(tone, rel=1e-6)


def test_the_python_api_scores_as_classify_does(checkpoint, audio):
    model = load_trained_model(checkpoint)
    samples, _ = soundfile.read(audio["long"], dtype="float32")
    scores = model.classify(torch.from_numpy(samples), RATE)
    _, silent = _expected_windows()
    assert scores.num_windows == len(silent)
    assert scores.silent.tolist() == silent and scores.num_silent_windows == sum(silent)
    kept = scores.window_probabilities[~scores.silent]
    torch.testing.assert_close(scores.probabilities, kept.mean(0))
    torch.testing.assert_close(
        model.classify(samples, RATE, pooling="max").probabilities, kept.amax(0)
    )
    silence = model.classify(torch.zeros(3 * RATE), RATE)
    assert silence.is_silent and silence.probabilities is None and silence.embedding is None
    with pytest.raises(ValueError, match=r"`pooling` to be one of \('mean', 'max'\)"):
        model.classify(samples, RATE, pooling="median")


def test_a_waveform_model_reports_a_silent_file_as_silence():
    """A speech encoder scores a file whole (one window): silent only under the floor."""
    from test_backbone_hf_audio import TINY

    from add_lightning.models import AudioClassifier, HFAudioEncoder

    torch.manual_seed(0)
    model = AudioClassifier(HFAudioEncoder(config=TINY["wav2vec2"]), num_classes=2).eval()
    trained = TrainedModel(model, WaveformPipeline(RATE, class_names=["a", "b"]))
    silence = trained.classify(torch.zeros(RATE), RATE)
    assert silence.is_silent and (silence.num_windows, silence.num_silent_windows) == (1, 1)
    noise = torch.from_numpy(_noise(RATE, seed=3)).float()
    scores = trained.classify(noise, RATE)
    assert not scores.is_silent and scores.num_silent_windows == 0
    assert float(scores.probabilities.sum()) == pytest.approx(1.0, abs=1e-6)


def test_option_errors(checkpoint, audio, tmp_path, capsys):
    assert build_parser().get_defaults().silence_db == SILENCE_BELOW_PEAK_DB
    take = str(audio["take"])
    with pytest.raises(ValueError, match=r"`--silence_db` to be a number of dB >= 0 or null"):
        _classify(checkpoint, take, "--silence_db", "-3")
    with pytest.raises(ValueError, match=r"`--windows` to end with \.csv or \.json"):
        _classify(checkpoint, take, "--windows", str(tmp_path / "windows.txt"))
    assert _classify(checkpoint, take, "--pooling", "median") == 2
    error = capsys.readouterr().err
    assert 'Parser key "pooling"' in error and "median" in error
