"""The CPU recipe for own data (README, "Your own data"): its parts agree, and it learns.

- A model without an optimizer is refused with what to add (there is no hidden default: the
  paper's fine-tuning rate left a randomly initialised AST at chance); the optimizer in use is
  logged when training starts.
- SpecAugment widths are checked against the input length or given relative to it.
- ``configs/experiments/ast_tiny_cpu.yaml`` sets the input once for data and backbone, so it
  composes with ``folder.yaml`` and with ``esc50.yaml`` (512 frames in the file) alike.
- The README's own-data command learns spoken-word-like clips about as well as a ridge
  regression on log-mel statistics.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from dataset_files import write_esc50_meta

from add_lightning.cli import console_main, main
from add_lightning.data import SpecAugment

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
RECIPE = CONFIGS / "experiments" / "ast_tiny_cpu.yaml"


def _fit_args(root: Path, tmp_path: Path, *configs: str) -> list[str]:
    args = ["fit"]
    for config in configs:
        args += ["--config", str(CONFIGS / config)]
    return [
        *args,
        "--data.init_args.dataset.init_args.root",
        str(root),
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
    ]


def _write_tones(root: Path, classes: int = 3, per_class: int = 5) -> Path:
    """``root/<class>/<i>.wav``: 1 s at 8 kHz, one tone per class in noise (seeded)."""
    rng = np.random.default_rng(0)
    time = np.arange(8000) / 8000
    for label in range(classes):
        (root / f"c{label}").mkdir(parents=True)
        for index in range(per_class):
            tone = 0.3 * np.sin(2 * np.pi * 300 * (label + 1) * time)
            samples = tone + 0.05 * rng.standard_normal(time.size)
            soundfile.write(root / f"c{label}" / f"{index}.wav", samples.astype(np.float32), 8000)
    return root


# --- the optimizer --------------------------------------------------------------------------


def test_a_model_without_an_optimizer_is_refused_with_what_to_add(tmp_path, capsys):
    # the README's former own-data command: the tiny model's file has no optimizer
    audio = _write_tones(tmp_path / "audio")
    args = _fit_args(audio, tmp_path, "data/folder.yaml", "model/ast_tiny.yaml", "loss/add.yaml")
    args += ["--data.init_args.features.target_frames", "128", "--trainer.max_epochs", "1"]
    assert console_main(args) == 1
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert error.startswith("add-lightning: error: AudioClassifier has no `optimizer`")
    assert "model.init_args.optimizer" in error
    assert "configs/experiments/ast_tiny_cpu.yaml" in error and "lr: 6.7e-6" in error
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained


def test_the_recipe_logs_its_optimizer_at_the_start(tmp_path, caplog):
    audio = _write_tones(tmp_path / "audio")
    args = _fit_args(audio, tmp_path, "data/folder.yaml", "experiments/ast_tiny_cpu.yaml")
    args += ["--trainer.fast_dev_run", "true"]
    with caplog.at_level(logging.INFO, logger="add_lightning"):
        assert main(args) == 0
    recipe = yaml.safe_load(RECIPE.read_text())["model.init_args.optimizer"]
    lr, weight_decay = recipe["init_args"]["lr"], recipe["init_args"]["weight_decay"]
    expected = f"Optimizer AdamW(lr={lr}, betas=(0.9, 0.999), weight_decay={weight_decay})"
    assert any(record.getMessage().startswith(expected) for record in caplog.records)
    assert any("schedule WarmupCosineLR" in record.getMessage() for record in caplog.records)


# --- SpecAugment and the input length -------------------------------------------------------


def _widest_mask(augment: SpecAugment, frames: int, draws: int = 300) -> int:
    """The widest time mask seen in ``draws`` maskings of a ``[frames, 128]`` input of ones."""
    masked = augment(torch.ones(draws, frames, 128), generator=torch.Generator().manual_seed(0))
    return int((masked == 0).all(dim=2).sum(dim=1).max())


@pytest.mark.parametrize("frames", [64, 300, 512])
def test_a_fractional_mask_follows_the_input_length(frames: int):
    widest = _widest_mask(SpecAugment(time_mask=0.25), frames)
    limit = frames // 4  # widths are drawn from U[0, limit)
    assert 0.8 * limit <= widest < limit


def test_an_absolute_mask_wider_than_half_the_input_is_refused():
    augment = SpecAugment(freq_mask=24, time_mask=96)  # AST's ESC-50 masks, for 512 frames
    assert 0.8 * 96 <= _widest_mask(augment, 512) < 96
    with pytest.raises(ValueError, match=r"`time_mask` 96 can mask 75% of the input's 128 frames"):
        augment(torch.ones(128, 128))
    with pytest.raises(ValueError, match=r"`freq_mask` 24 can mask 150% of the input's 16 bins"):
        augment(torch.ones(512, 16))


@pytest.mark.parametrize("width", [0.6, -0.1, 1.0, True, "0.2"])
def test_a_mask_width_that_is_neither_frames_nor_a_fraction_is_refused(width):
    with pytest.raises(ValueError, match=r"`time_mask` to be frames \(an int >= 0\) or a fraction"):
        SpecAugment(time_mask=width)


def test_folder_yaml_masks_are_relative_to_the_input():
    # folder.yaml is composed with recipes of any length: its masks must not be frame counts
    init_args = yaml.safe_load((CONFIGS / "data/folder.yaml").read_text())["data"]["init_args"]
    masks = init_args["spec_augment"]["init_args"]
    assert all(isinstance(masks[name], float) for name in ("freq_mask", "time_mask"))


# --- composition ----------------------------------------------------------------------------


def _write_esc50(root: Path) -> Path:
    """An ESC-50-master folder: 3 categories x 5 folds x 2 clips of 5 s at 44.1 kHz (seeded)."""
    folder = root / "ESC-50-master"
    (folder / "audio").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for target, category in enumerate(("dog", "rain", "siren")):
        for fold in range(1, 6):
            for take in "AB":
                name = f"{fold}-{100 + fold}-{take}-{target}.wav"
                samples = 0.1 * rng.standard_normal(5 * 44100).astype(np.float32)
                soundfile.write(folder / "audio" / name, samples, 44100)
                rows.append([name, fold, target, category, "False", 100 + fold, take])
    write_esc50_meta(folder, rows)
    return folder


def test_esc50_from_a_local_copy_with_the_cpu_recipe_runs(tmp_path):
    # esc50.yaml says 512 frames and AST's masks of 96 frames; the recipe sets the input for
    # both data and backbone, and its masks are relative, so the two compose.
    folder = _write_esc50(tmp_path / "esc50")
    args = _fit_args(
        folder,
        tmp_path,
        "data/esc50.yaml",
        "experiments/ast_tiny_cpu.yaml",
        "loss/add.yaml",
        "trainer/cpu.yaml",
    )
    args += ["--data.init_args.dataset.init_args.download", "false"]
    assert main([*args, "--trainer.fast_dev_run", "true"]) == 0

    from add_lightning.lightning_cli import AddLightningCLI

    cli = AddLightningCLI(args=args[1:], run=False)
    recipe = yaml.safe_load(RECIPE.read_text())
    frames = recipe["data.init_args.features.target_frames"]
    assert cli.datamodule.features.target_frames == frames != 512
    assert cli.model.backbone.input_shape == (frames, cli.datamodule.features.num_mel_bins)


# --- the recipe learns ----------------------------------------------------------------------

RATE = 8000
# Each "word": two vowels (F1, F2 in Hz, Peterson & Barney's averages) with a glide between.
WORDS = {
    "ia": ((270, 2290), (730, 1090)),
    "ui": ((300, 870), (270, 2290)),
    "au": ((730, 1090), (300, 870)),
    "eo": ((530, 1840), (570, 840)),
}


def _say(rng: np.random.Generator, vowels: tuple[tuple[int, int], ...]) -> np.ndarray:
    """One take of a word: harmonics of a gliding f0 shaped by two moving formants, placed at
    a random offset in 1 to 2 s of noise (speaker size, pitch, rate, level and SNR vary)."""
    speaker = rng.uniform(0.85, 1.2)  # formant scale: vocal tract length
    f0_start, f0_end = rng.uniform(90, 240) * np.array([1.0, rng.uniform(0.8, 1.1)])
    duration = rng.uniform(0.35, 0.7)
    time = np.arange(int(duration * RATE)) / RATE
    progress = np.clip((time / duration - 0.3) / 0.4, 0, 1)  # steady, glide, steady
    formants = [speaker * (a + (b - a) * progress) for a, b in zip(*vowels, strict=True)]
    f0 = f0_start + (f0_end - f0_start) * time / duration
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voice = np.zeros_like(time)
    for k in range(1, int(3800 / f0.min()) + 1):
        gain = sum(np.exp(-0.5 * ((k * f0 - f) / 90.0) ** 2) for f in formants) / k**0.5
        voice += gain * np.sin(k * phase)
    voice *= np.hanning(time.size) ** 0.3 / np.abs(voice).max()
    clip = np.zeros(int(rng.uniform(1.0, 2.0) * RATE))
    start = rng.integers(0, clip.size - time.size)
    clip[start : start + time.size] = voice
    noise = rng.standard_normal(clip.size) * np.sqrt(
        np.mean(voice**2) / 10 ** (rng.uniform(10, 30) / 10)
    )
    return (rng.uniform(0.1, 0.8) * (clip + noise)).astype(np.float32)


def _write_words(root: Path, per_word: int) -> Path:
    rng = np.random.default_rng(0)
    for word, vowels in WORDS.items():
        (root / word).mkdir(parents=True)
        for take in range(per_word):
            samples = _say(rng, vowels)
            stereo = np.stack([samples, 0.9 * samples], axis=1)  # two channels, as recorded
            soundfile.write(root / word / f"{take}.wav", stereo, RATE)
    return root


def _ridge_accuracy(root: Path) -> float:
    """Ridge regression (one-hot targets, alpha 1) on the mean and std over time of each of the
    128 log-mel bins, standardised, trained and tested on the recipe's split (fold 1 of
    folder.yaml's 5 seeded folds)."""
    from add_lightning.data import FolderDataset
    from add_lightning.data.fbank import FbankOptions, load_fbank_frames

    dataset = FolderDataset(str(root), num_folds=5, seed=0)

    def statistics(split: str) -> tuple[np.ndarray, np.ndarray]:
        clips = dataset.clips(split, 1)
        frames = [load_fbank_frames(clip.path, FbankOptions()).double() for clip in clips]
        stats = [torch.cat([f.mean(0), f.std(0)]).numpy() for f in frames]
        return np.stack(stats), np.array([clip.label for clip in clips])

    (train, labels), (test, test_labels) = statistics("train"), statistics("test")
    mean, std = train.mean(0), train.std(0) + 1e-8
    design = np.c_[(train - mean) / std, np.ones(len(train))]
    penalty = np.eye(design.shape[1])
    penalty[-1, -1] = 0  # the intercept is not shrunk
    weights = np.linalg.solve(design.T @ design + penalty, design.T @ np.eye(len(WORDS))[labels])
    scores = np.c_[(test - mean) / std, np.ones(len(test))] @ weights
    return float((scores.argmax(1) == test_labels).mean())


def test_the_readme_own_data_command_learns_words_as_well_as_a_ridge_regression(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # 4 words x 25 takes: 80 training clips, 20 held out (fold 1 of 5)
    audio = _write_words(tmp_path / "words", per_word=25)
    ridge = _ridge_accuracy(audio)
    # the README's own-data command, with the root changed (and the run's folders)
    args = _fit_args(
        audio,
        tmp_path,
        "data/folder.yaml",
        "experiments/ast_tiny_cpu.yaml",
        "loss/add.yaml",
        "trainer/cpu.yaml",
    )
    assert main(args) == 0
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    accuracy = events.Scalars("val/acc")[-1].value  # fold 1: the held-out clips
    assert ridge >= 0.8  # the words are learnable from log-mel statistics
    assert accuracy >= ridge - 0.05, (accuracy, ridge)
