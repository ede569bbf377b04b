"""Data mistakes that would train silently: an IEMOCAP id that is a path, two folders of one
session, the same audio in a training and a test split, a class some fold trains without,
folders skipped for their name, and a `root` that is an audio file."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from dataset_files import write_manifest
from test_data_datasets import make_iemocap
from tiny_runs import tiny_run_config

from add_lightning.cli import console_main
from add_lightning.data import (
    ESC50,
    IEMOCAP,
    AudioDataModule,
    FbankOptions,
    FolderDataset,
    SpeechCommands,
    SyntheticDataset,
    WaveformDataModule,
)

RATE = 16000
FEATURES = FbankOptions(num_mel_bins=32, target_frames=24)


def write_wav(path: Path, seed: int, samples: int = 1600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).uniform(-0.5, 0.5, samples).astype(np.float32)
    soundfile.write(path, noise, RATE, subtype="PCM_16")
    return path


def data_module(index, fold: int | None, **kwargs: object) -> AudioDataModule:
    return AudioDataModule(index, fold=fold, features=FEATURES, batch_size=2, **kwargs)


# 7. IEMOCAP: ids are names, one folder per session


def test_iemocap_utterance_id_that_is_a_path_is_refused(tmp_path: Path) -> None:
    make_iemocap(tmp_path)
    session1 = tmp_path / "Session1"
    dialog = "Ses01F_impro01"
    # any folder below the dialog's wav folder lets "../" climb out of it
    (session1 / "sentences/wav" / dialog / "Ses01F_parts").mkdir()
    # F005 is labelled "fru" in Session2, so only this line would put it into an index
    leak = "Ses01F_parts/../../../../../Session2/sentences/wav/Ses02F_impro01/Ses02F_impro01_F005"
    label_file = session1 / "dialog/EmoEvaluation" / f"{dialog}.txt"
    lines = label_file.read_text().splitlines()
    lines.insert(2, f"[9.0100 - 9.9000]\t{leak}\tneu\t[2.5000, 2.5000, 2.5000]")
    label_file.write_text("\n".join(lines) + "\n")
    assert (session1 / "sentences/wav" / dialog / f"{leak}.wav").is_file()  # it would leak
    with pytest.raises(ValueError, match=rf"{label_file} line 3: the utterance id .* is a path"):
        IEMOCAP(str(tmp_path)).clips("test", 1)


@pytest.mark.parametrize("second", ["Session02", "Session002"])
def test_iemocap_two_folders_of_one_session_are_refused(tmp_path: Path, second: str) -> None:
    make_iemocap(tmp_path)
    shutil.copytree(tmp_path / "Session2", tmp_path / second)
    with pytest.raises(ValueError, match="are both session 2") as error:
        _ = IEMOCAP(str(tmp_path)).folds
    assert str(tmp_path / "Session2") in str(error.value)
    assert str(tmp_path / second) in str(error.value)


# 8. the same audio under two names in a training and a held-out split


def _manifest_with_a_copy(root: Path, copy: str) -> tuple[Path, Path, Path]:
    """Folds 1 and 2, two classes; fold 2's ``dog/copy.wav`` is fold 1's ``dog/0.wav``."""
    rows = []
    for c, label in enumerate(("cat", "dog")):
        for k in range(4):
            path = write_wav(root / label / f"{k}.wav", seed=10 * c + k)
            rows.append([path.relative_to(root).as_posix(), label, k % 2 + 1])
    original, duplicate = root / "dog" / "0.wav", root / "dog" / "copy.wav"
    {"bytes": shutil.copyfile, "hardlink": os.link}[copy](original, duplicate)
    rows.append(["dog/copy.wav", "dog", 2])
    return write_manifest(root / "clips.csv", rows, ["path", "label", "fold"]), original, duplicate


# (a symlink is refused by the index already: it lists the file it resolves to twice)
@pytest.mark.parametrize("copy", ["bytes", "hardlink"])
def test_same_audio_in_training_and_test_split_is_refused(tmp_path: Path, copy: str) -> None:
    manifest, original, duplicate = _manifest_with_a_copy(tmp_path, copy)
    for fold, (train, held_out) in ((1, (duplicate, original)), (2, (original, duplicate))):
        dm = data_module(FolderDataset(str(manifest)), fold=fold)
        with pytest.raises(ValueError) as error:
            dm.setup("fit")
        message = str(error.value)
        assert f"{held_out} and the training clip {train}" in message
        assert "allow_duplicate_audio" in message and "\n" not in message


def test_same_audio_allowed_with_a_warning(tmp_path: Path, caplog) -> None:
    manifest, original, duplicate = _manifest_with_a_copy(tmp_path, "bytes")
    dm = data_module(FolderDataset(str(manifest)), fold=2, allow_duplicate_audio=True)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert f"{duplicate} and the training clip {original}" in caplog.text
    assert len(dm.train_dataloader().dataset) == 4


def test_same_audio_in_class_folders_with_folds_is_refused(tmp_path: Path) -> None:
    # two clips per class and two folds: each fold holds one of them
    for c, label in enumerate(("cat", "dog")):
        for k in range(2):
            write_wav(tmp_path / label / f"{k}.wav", seed=10 * c + k)
    shutil.copyfile(tmp_path / "dog" / "0.wav", tmp_path / "dog" / "1.wav")
    dm = data_module(FolderDataset(str(tmp_path), num_folds=2), fold=1)
    with pytest.raises(ValueError, match=r"dog/[01]\.wav and the training clip .*dog/[01]\.wav"):
        dm.setup("fit")


def test_waveform_module_refuses_the_same_audio_too(tmp_path: Path) -> None:
    manifest, _, _ = _manifest_with_a_copy(tmp_path, "hardlink")
    dm = WaveformDataModule(FolderDataset(str(manifest)), fold=1, batch_size=2)
    with pytest.raises(ValueError, match="allow_duplicate_audio"):
        dm.setup("fit")


@pytest.mark.parametrize("samples", [800, 48000], ids=["under-64KiB", "over-64KiB"])
def test_clips_that_differ_in_one_sample_are_not_duplicates(tmp_path: Path, samples: int) -> None:
    # 48,000 float samples: the first 64 KiB agree, only the whole-file hash tells them apart
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, samples).astype(np.float32)
    rows = []
    for c, label in enumerate(("cat", "dog")):
        for k in range(2):
            clip = noise.copy()
            clip[-1] = 0.01 * (2 * c + k)
            soundfile.write(tmp_path / f"{label}{k}.wav", clip, RATE, subtype="FLOAT")
            rows.append([f"{label}{k}.wav", label, k + 1])
    manifest = write_manifest(tmp_path / "clips.csv", rows, ["path", "label", "fold"])
    data_module(FolderDataset(str(manifest)), fold=1).setup("fit")  # no error
    shutil.copyfile(tmp_path / "cat0.wav", tmp_path / "cat1.wav")
    with pytest.raises(ValueError, match=r"cat1\.wav and the training clip .*cat0\.wav"):
        data_module(FolderDataset(str(manifest)), fold=2).setup("fit")


def test_clean_check_kept_in_cache_dir_does_not_hide_a_later_copy(tmp_path: Path) -> None:
    manifest, original, duplicate = _manifest_with_a_copy(tmp_path / "data", "bytes")
    write_wav(duplicate, seed=1234)  # not a copy yet
    cache = tmp_path / "cache"
    data_module(FolderDataset(str(manifest)), fold=2, cache_dir=str(cache)).setup("fit")
    assert len(list(cache.glob("no-shared-audio-*.json"))) == 1
    shutil.copyfile(original, duplicate)  # rewritten in place: same path, new bytes
    with pytest.raises(ValueError, match=rf"{duplicate} and the training clip {original}"):
        data_module(FolderDataset(str(manifest)), fold=2, cache_dir=str(cache)).setup("fit")


# 9. a class that a fold trains without


def test_class_that_a_fold_trains_without_is_refused_for_that_fold(tmp_path: Path, caplog) -> None:
    rows = [[str(write_wav(tmp_path / f"dog{k}.wav", seed=k)), "dog", k % 3 + 1] for k in range(6)]
    rows.append([str(write_wav(tmp_path / "cat.wav", seed=99)), "cat", 2])
    manifest = write_manifest(tmp_path / "clips.csv", rows, ["path", "label", "fold"])
    with pytest.raises(ValueError) as error:
        data_module(FolderDataset(str(manifest)), fold=2).setup("fit")
    message = str(error.value)
    assert "fold 2: the training split has no clip of the classes 'cat' (1 clip" in message
    assert "fold 2 trains without it but tests on it" in message and "\n" not in message
    with caplog.at_level(logging.WARNING):
        data_module(FolderDataset(str(manifest)), fold=1).setup("fit")
    assert "'cat' (1 clip in folds [2]: folds [1, 3] test without it, fold 2 trains" in caplog.text


def test_class_with_one_clip_in_class_folders_is_refused(tmp_path: Path) -> None:
    for k in range(6):
        write_wav(tmp_path / "dog" / f"{k}.wav", seed=k)
    write_wav(tmp_path / "cat" / "0.wav", seed=99)
    index = FolderDataset(str(tmp_path), num_folds=3)
    (fold,) = [f for f in index.folds if any(c.label == 0 for c in index.clips("test", f))]
    with pytest.raises(
        ValueError, match=rf"fold {fold}: the training split has no clip of .*'cat'"
    ):
        data_module(index, fold=fold).setup("fit")


def test_class_only_in_the_test_list_is_refused(tmp_path: Path) -> None:
    rows = [[str(write_wav(tmp_path / f"dog{k}.wav", seed=k)), "dog", "train"] for k in range(3)]
    rows += [[str(write_wav(tmp_path / f"cat{k}.wav", seed=9 + k)), "cat", "test"] for k in (0, 1)]
    manifest = write_manifest(tmp_path / "clips.csv", rows, ["path", "label", "split"])
    with pytest.raises(ValueError, match=r"no clip of the classes 'cat' \(2 test clips\)"):
        data_module(FolderDataset(str(manifest)), fold=None).setup("test")


def test_one_clip_class_fails_fit_in_one_line(tmp_path: Path, capsys) -> None:
    rows = [[str(write_wav(tmp_path / f"dog{k}.wav", seed=k)), "dog", k % 2 + 1] for k in range(4)]
    rows.append([str(write_wav(tmp_path / "cat.wav", seed=99)), "cat", 1])
    manifest = write_manifest(tmp_path / "clips.csv", rows, ["path", "label", "fold"])
    dataset = {
        "class_path": "add_lightning.data.FolderDataset",
        "init_args": {"root": str(manifest)},
    }
    config = tmp_path / "fit.yaml"
    config.write_text(tiny_run_config(dataset, frames=24, default_root_dir=str(tmp_path / "run")))
    assert console_main(["fit", "--config", str(config)]) == 1
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert error.startswith("add-lightning: error: ") and "'cat' (1 clip in folds [1]" in error


# 10. folders skipped for their name


def test_underscore_folders_are_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    for c, label in enumerate(("cat", "dog", "_unknown_", ".cache")):
        for k in range(2 + c):
            write_wav(tmp_path / label / f"{k}.wav", seed=10 * c + k)
    (tmp_path / "__MACOSX" / "cat").mkdir(parents=True)  # only hidden "._" files: no audio
    (tmp_path / "__MACOSX" / "cat" / "._0.wav").write_bytes(b"\x00\x05\x16\x07")
    with caplog.at_level(logging.WARNING):
        index = FolderDataset(str(tmp_path))
        assert index.class_names == ["cat", "dog"]
        assert len(index.entries()) == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "['_unknown_'] (audio files: [4]) are not classes" in warnings[0]


# 13. a `root` that is an audio file


@pytest.mark.parametrize(
    ("make", "fold"),
    [
        (lambda root: FolderDataset(root), None),
        (lambda root: FolderDataset(root, num_folds=2), 1),
        (lambda root: ESC50(root), 1),
        (lambda root: ESC50(root, download=True), 1),
        (lambda root: SpeechCommands(root), None),
        (lambda root: IEMOCAP(root), 1),
        (lambda root: SyntheticDataset(root), 1),
    ],
    ids=[
        "folder",
        "folder-folds",
        "esc50",
        "esc50-download",
        "speech_commands",
        "iemocap",
        "synth",
    ],
)
def test_root_that_is_an_audio_file_says_a_folder_was_expected(tmp_path: Path, make, fold) -> None:
    clip = write_wav(tmp_path / "clip.wav", seed=0)
    with pytest.raises(NotADirectoryError) as error:
        dm = data_module(make(str(clip)), fold=fold)
        dm.prepare_data()
        dm.setup("fit")
    message = str(error.value)
    assert f"`root` {clip} is " in message and "expected a folder" in message
    assert "\n" not in message


def test_export_root_that_is_an_audio_file_says_a_folder_was_expected(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    from test_data_huggingface import make_hf_esc50

    from add_lightning.data import HuggingFaceDataset

    clip = write_wav(tmp_path / "clip.wav", seed=0)
    saved = str(make_hf_esc50(tmp_path / "hf"))
    index = HuggingFaceDataset(saved, root=str(clip), label_column="category", fold_column="fold")
    with pytest.raises(NotADirectoryError, match=rf"`root` {clip} is a file; expected a folder"):
        dm = data_module(index, fold=1)
        dm.prepare_data()
        dm.setup("fit")


def test_root_that_is_an_audio_file_fails_fit_in_one_line(tmp_path: Path, capsys) -> None:
    clip = write_wav(tmp_path / "clip.wav", seed=0)
    dataset = {"class_path": "add_lightning.data.FolderDataset", "init_args": {"root": str(clip)}}
    config = tmp_path / "fit.yaml"
    config.write_text(tiny_run_config(dataset, frames=24, default_root_dir=str(tmp_path / "run")))
    assert console_main(["fit", "--config", str(config)]) == 1
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert error == (
        f"add-lightning: error: FolderDataset: `root` {clip} is an audio file; expected a folder "
        "with one sub-folder per class or a CSV manifest file (path,label[,fold|split])."
    )
