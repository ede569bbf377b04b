"""Class subsets, ESC-10, Speech Commands V2-12 and the IEMOCAP label sets, on tiny generated
copies of the official layouts; counts are worked out by hand from the generators."""

from __future__ import annotations

import logging
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from dataset_files import write_esc50_meta

from add_lightning.data import ESC50, IEMOCAP, FolderDataset, SpeechCommands
from add_lightning.data.datasets.esc50 import ESC10_CLASS_NAMES

RATE = 16000


def write_wav(path: Path, seconds: float = 0.1, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.random.default_rng(seed).uniform(-0.5, 0.5, round(seconds * RATE))
    soundfile.write(path, samples.astype(np.float32), RATE, subtype="PCM_16")
    return path


# ------------------------------------------------------------------ Speech Commands layout

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
OTHERS = ("bed", "cat", "marvin")
SPEAKERS = 6  # speaker 4 -> validation_list.txt, speaker 5 -> testing_list.txt, 0-3 -> train
NOISE_SECONDS = {"running_tap.wav": 30.0, "white_noise.wav": 20.0}


def make_speech_commands(root: Path) -> Path:
    validation, test = [], []
    for w, word in enumerate(KEYWORDS + OTHERS):
        for speaker in range(SPEAKERS):
            relative = f"{word}/{speaker:08x}_nohash_0.wav"
            write_wav(root / relative, seed=100 * w + speaker)
            (validation if speaker == 4 else test if speaker == 5 else []).append(relative)
    for n, (name, seconds) in enumerate(NOISE_SECONDS.items()):
        write_wav(root / "_background_noise_" / name, seconds=seconds, seed=999 + n)
    (root / "_background_noise_" / "README.md").write_text("noise\n")
    (root / "validation_list.txt").write_text("".join(f"{r}\n" for r in validation))
    (root / "testing_list.txt").write_text("".join(f"{r}\n" for r in test))
    return root


@pytest.fixture(scope="module")
def speech_commands(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_speech_commands(tmp_path_factory.mktemp("sc") / "speech_commands_v0.02")


def test_speech_commands_class_subset_counts_and_ids(speech_commands: Path, caplog) -> None:
    with caplog.at_level(logging.INFO):
        index = SpeechCommands(str(speech_commands), classes=["yes", "marvin", "down"])
        assert index.class_names == ["down", "marvin", "yes"]  # ids: sorted subset
        clips = {split: index.clips(split) for split in ("train", "validation", "test")}
    assert [len(clips[s]) for s in clips] == [3 * 4, 3, 3]
    for split_clips in clips.values():
        for clip in split_clips:
            word = clip.clip_id.split("/")[0]
            assert clip.label == {"down": 0, "marvin": 1, "yes": 2}[word]
    assert "keeps 18 of 78 clips" in caplog.text
    assert "60 clips of other classes dropped" in caplog.text


def test_class_subset_rejects_unknown_names(speech_commands: Path) -> None:
    with pytest.raises(ValueError, match=r"\['zebra'\] are not among its 13 classes"):
        _ = SpeechCommands(str(speech_commands), classes=["yes", "zebra"]).class_names
    with pytest.raises(ValueError, match="distinct class names"):
        SpeechCommands(str(speech_commands), classes=["yes", "yes"])
    with pytest.raises(ValueError, match="list of class names"):
        SpeechCommands(str(speech_commands), classes="yes")


def _part(split: str, frames: int) -> tuple[int, int]:
    first, last = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}[split]
    return round(first * frames), round(last * frames)


def test_v2_12_classes_counts_and_silence_cuts(speech_commands: Path, tmp_path: Path) -> None:
    index = SpeechCommands(str(speech_commands), protocol="v2-12", silence_dir=str(tmp_path))
    names = sorted((*KEYWORDS, "_unknown_", "_silence_"))
    assert index.class_names == names and names[:2] == ["_silence_", "_unknown_"]
    keywords_per_split = {"train": 10 * 4, "validation": 10, "test": 10}
    others_per_split = {"train": 3 * 4, "validation": 3, "test": 3}
    noise = {
        name: soundfile.read(speech_commands / "_background_noise_" / name, dtype="int16")[0]
        for name in sorted(NOISE_SECONDS)
    }
    for split, keywords in keywords_per_split.items():
        clips = index.clips(split)
        by_label = {name: [c for c in clips if c.label == names.index(name)] for name in names}
        expected = math.ceil(0.1 * keywords)  # train 4, validation 1, test 1
        assert len(by_label["_unknown_"]) == expected
        assert len(by_label["_silence_"]) == expected
        for word in KEYWORDS:
            assert len(by_label[word]) == keywords // 10
        unknown_words = {c.clip_id.split("/")[0] for c in by_label["_unknown_"]}
        assert unknown_words <= set(OTHERS)
        assert len(by_label["_unknown_"]) <= others_per_split[split]
        # silence: clip k from recording k mod 2, m clips evenly spaced over the split's part
        counts = {name: len(range(r, expected, 2)) for r, name in enumerate(sorted(noise))}
        wanted = set()
        for name, samples in noise.items():
            start, end = _part(split, len(samples))
            m = counts[name]
            for j in range(m):
                offset = start + (round(j * (end - start - RATE) / (m - 1)) if m > 1 else 0)
                wanted.add((name, offset))
        got = set()
        for clip in by_label["_silence_"]:
            stem, offset = clip.clip_id.split("/")[1].rsplit("_", 1)
            name, offset = f"{stem}.wav", int(offset)
            got.add((name, offset))
            samples, rate = soundfile.read(clip.path, dtype="int16")
            assert rate == RATE and np.array_equal(samples, noise[name][offset : offset + RATE])
            start, end = _part(split, len(noise[name]))
            assert start <= offset and offset + RATE <= end  # inside this split's part only
            assert Path(clip.path).is_relative_to(tmp_path)
        assert got == wanted
    assert not list(tmp_path.rglob("*.tmp"))


def test_v2_12_unknown_draw_is_seeded(speech_commands: Path, tmp_path: Path) -> None:
    def unknown(seed: int) -> list[str]:
        index = SpeechCommands(
            str(speech_commands), protocol="v2-12", silence_dir=str(tmp_path), seed=seed
        )
        return [c.clip_id for c in index.clips("train") if c.label == 1]  # _unknown_

    first = unknown(0)
    assert first == unknown(0)
    assert any(unknown(seed) != first for seed in (1, 2, 3))


def test_v2_12_with_subset_and_default_silence_folder(speech_commands: Path) -> None:
    index = SpeechCommands(
        str(speech_commands), protocol="v2-12", classes=["yes", "_silence_", "_unknown_"]
    )
    assert index.class_names == ["_silence_", "_unknown_", "yes"]
    test = index.clips("test")
    assert [sum(c.label == k for c in test) for k in range(3)] == [1, 1, 1]
    silence = next(c for c in test if c.label == 0)
    assert Path(silence.path).parent.parent == speech_commands / "_silence_cut_"
    # the written silence clips are not a class of the 35-word protocol
    assert "_silence_cut_" not in SpeechCommands(str(speech_commands)).class_names


def test_v2_12_needs_the_ten_keywords(tmp_path: Path) -> None:
    root = make_speech_commands(tmp_path / "sc")
    shutil.rmtree(root / "stop")
    for name in ("validation_list.txt", "testing_list.txt"):
        lines = (root / name).read_text().splitlines(keepends=True)
        (root / name).write_text("".join(line for line in lines if not line.startswith("stop/")))
    with pytest.raises(FileNotFoundError, match=r"needs the word folders .*\['stop'\] are missing"):
        SpeechCommands(str(root), protocol="v2-12").clips("train")


def test_v2_12_needs_background_noise(tmp_path: Path) -> None:
    root = make_speech_commands(tmp_path / "sc")
    for path in (root / "_background_noise_").iterdir():
        path.unlink()
    with pytest.raises(FileNotFoundError, match=r"_background_noise_/\*\.wav"):
        SpeechCommands(str(root), protocol="v2-12").clips("train")


def test_speech_commands_rejects_an_unknown_protocol(speech_commands: Path) -> None:
    with pytest.raises(ValueError, match="`protocol`"):
        SpeechCommands(str(speech_commands), protocol="v1-12")


# ------------------------------------------------------------------ ESC-50 / ESC-10

ESC_ROWS = {"dog": (0, True), "rooster": (1, True), "airplane": (47, False), "cat": (5, False)}


def make_esc50(root: Path) -> Path:
    folder = root / "ESC-50-master"
    rows = []
    for category, (target, esc10) in ESC_ROWS.items():
        for fold in range(1, 6):
            name = f"{fold}-{1000 + target}-A-{target}.wav"
            write_wav(folder / "audio" / name, seed=len(rows))
            rows.append([name, fold, target, category, str(esc10), 1000 + target, "A"])
    write_esc50_meta(folder, rows)
    return folder


def test_esc10_reads_the_esc10_column(tmp_path: Path) -> None:
    index = ESC50(str(make_esc50(tmp_path)), classes="esc10")
    assert index.class_names == ["dog", "rooster"]
    assert index.folds == (1, 2, 3, 4, 5)
    assert len(index.clips("train", fold=2)) == 2 * 4
    test = index.clips("test", fold=2)
    assert sorted((c.clip_id, c.label) for c in test) == [("2-1000-A-0", 0), ("2-1001-A-1", 1)]


def test_esc50_subset_by_names(tmp_path: Path) -> None:
    index = ESC50(str(make_esc50(tmp_path)), classes=["cat", "airplane"])
    assert index.class_names == ["airplane", "cat"]
    assert {c.clip_id for c in index.clips("test", fold=1)} == {"1-1047-A-47", "1-1005-A-5"}


def test_esc10_names_before_download() -> None:
    # the esc10 column of the official esc50.csv is True for these ten categories
    official = {"dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby"}
    official |= {"sneezing", "clock_tick", "helicopter", "chainsaw"}
    index = ESC50("/nonexistent/esc50", download=True, classes="esc10")
    assert index.class_names == sorted(official) == list(ESC10_CLASS_NAMES)


def test_esc10_errors(tmp_path: Path) -> None:
    folder = make_esc50(tmp_path)
    csv_path = folder / "meta" / "esc50.csv"
    csv_path.write_text(csv_path.read_text().replace("True", "False"))
    with pytest.raises(ValueError, match=r"esc50\.csv marks no clip as ESC-10"):
        _ = ESC50(str(folder), classes="esc10").class_names
    with pytest.raises(ValueError, match='"esc10" or a list'):
        ESC50(str(folder), classes="esc-10")


def test_folder_dataset_subset_drops_other_classes(tmp_path: Path) -> None:
    for c, name in enumerate(("a", "b", "c")):
        for k in range(4):
            write_wav(tmp_path / name / f"{k}.wav", seed=10 * c + k)
    index = FolderDataset(str(tmp_path), num_folds=2, classes=["c", "a"])
    assert index.class_names == ["a", "c"]
    clips = index.clips("train", 1) + index.clips("test", 1)
    assert (
        sorted((c.clip_id.split("/")[0], c.label) for c in clips) == [("a", 0)] * 4 + [("c", 1)] * 4
    )


# ------------------------------------------------------------------ IEMOCAP label sets

IEMOCAP_LABELS = ["neu", "hap", "exc", "ang", "sad", "fru", "xxx", "sur", "exc"]


def make_iemocap(root: Path) -> None:
    """Five sessions, one dialog each, one utterance per label of ``IEMOCAP_LABELS``."""
    for session in range(1, 6):
        dialog = f"Ses0{session}M_script01_1"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for u, label in enumerate(IEMOCAP_LABELS):
            utterance = f"{dialog}_M{u:03d}"
            write_wav(root / f"Session{session}/sentences/wav/{dialog}/{utterance}.wav", seed=u)
            lines += [f"[{u}.01 - {u}.90]\t{utterance}\t{label}\t[2.5000, 3.0000, 2.0000]", ""]
        evaluation = root / f"Session{session}/dialog/EmoEvaluation"
        evaluation.mkdir(parents=True)
        (evaluation / f"{dialog}.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("label_set", "per_session"),
    [
        ("superb", {"ang": 1, "hap": 3, "neu": 1, "sad": 1}),  # hap + 2 exc
        ("authors", {"ang": 1, "hap": 1, "neu": 1, "sad": 1}),  # exc dropped
    ],
)
def test_iemocap_label_sets(tmp_path: Path, label_set: str, per_session: dict) -> None:
    make_iemocap(tmp_path / "IEMOCAP_full_release")
    index = IEMOCAP(str(tmp_path), label_set=label_set)
    assert index.class_names == ["ang", "hap", "neu", "sad"]
    test = index.clips("test", fold=3)
    counts = {name: sum(c.label == k for c in test) for k, name in enumerate(index.class_names)}
    assert counts == per_session
    assert {c.clip_id[:5] for c in test} == {"Ses03"}
    assert len(index.clips("train", fold=3)) == 4 * sum(per_session.values())


def test_iemocap_label_set_with_subset_and_errors(tmp_path: Path) -> None:
    make_iemocap(tmp_path)
    index = IEMOCAP(str(tmp_path), label_set="authors", classes=["sad", "ang"])
    assert index.class_names == ["ang", "sad"]
    assert len(index.clips("train", fold=1)) == 4 * 2
    with pytest.raises(ValueError, match="`label_set`"):
        IEMOCAP(str(tmp_path), label_set="four")


# ------------------------------------------------------------------ the configs, end to end

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = """\
model:
  class_path: add_lightning.models.AudioClassifier
  init_args:
    backbone:
      class_path: add_lightning.models.ASTBackbone
      init_args: {pretrained: null, max_length: 128, num_mel_bins: 128, hidden_size: 32,
                  num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 37}
    loss:
      class_path: add_lightning.losses.ClassificationLoss
      init_args:
        embedding: {class_path: add_lightning.losses.ADDLoss}
    optimizer: {class_path: torch.optim.AdamW, init_args: {lr: 2.0e-3}}
trainer: {accelerator: cpu, devices: 1, enable_progress_bar: false, enable_model_summary: false}
"""


def test_esc10_config_gives_the_esc10_classes(tmp_path: Path) -> None:
    from add_lightning.lightning_cli import AddLightningCLI

    model = tmp_path / "model.yaml"
    model.write_text(TINY_MODEL)
    args = [
        *("--config", str(REPO / "configs/data/esc10.yaml"), "--config", str(model)),
        *("--data.init_args.dataset.init_args.root", str(make_esc50(tmp_path))),
        *("--data.init_args.dataset.init_args.download", "false"),
        *("--data.init_args.cache_dir", "null", "--data.init_args.num_workers", "0"),
        *("--model.init_args.backbone.init_args.max_length", "512"),
        *("--trainer.default_root_dir", str(tmp_path / "run")),
    ]
    cli = AddLightningCLI(args=args, run=False)
    assert cli.datamodule.class_names == ["dog", "rooster"]
    assert cli.model.num_classes == 2


def test_readme_subset_of_ten_words_parses_to_the_keywords(tmp_path: Path) -> None:
    from add_lightning.lightning_cli import AddLightningCLI

    make_speech_commands(tmp_path / "speech_commands_v0.02")
    model = tmp_path / "model.yaml"
    model.write_text(TINY_MODEL)
    words = '["yes","no","up","down","left","right","on","off","stop","go"]'  # docs/own-data.md
    args = [
        *("--config", str(REPO / "configs/data/speech_commands.yaml"), "--config", str(model)),
        *("--data.init_args.dataset.init_args.root", str(tmp_path)),
        *("--data.init_args.dataset.init_args.download", "false"),
        *("--data.init_args.dataset.init_args.classes", words),
        *("--data.init_args.cache_dir", "null", "--data.init_args.num_workers", "0"),
        *("--trainer.default_root_dir", str(tmp_path / "run")),
    ]
    cli = AddLightningCLI(args=args, run=False)
    assert cli.datamodule.class_names == sorted(KEYWORDS)
    assert cli.model.num_classes == 10
    assert words in (REPO / "docs" / "own-data.md").read_text()


def test_v2_12_config_fits_through_the_console_script(tmp_path: Path) -> None:
    import os
    import subprocess

    root = make_speech_commands(tmp_path / "speech_commands_v0.02")
    model = tmp_path / "model.yaml"
    model.write_text(TINY_MODEL)
    command = [
        str(Path(sys.executable).with_name("add-lightning")),
        *("fit", "--config", str(REPO / "configs/data/speech_commands_v2_12.yaml")),
        *("--config", str(model), "--data.init_args.dataset.init_args.root", str(tmp_path)),
        *("--data.init_args.dataset.init_args.download", "false"),
        *("--data.init_args.cache_dir", str(tmp_path / "cache")),
        *("--data.init_args.num_workers", "0", "--data.init_args.batch_size", "8"),
        *("--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path / "run")),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max_steps=1` reached" in result.stderr  # one training batch of the 12 classes
    assert len(list((root / "_silence_cut_").rglob("*.wav"))) == 4 + 1 + 1
