"""Configs of tiny runs that several test modules train: synthetic audio and a one-layer AST.

``tiny_run_config(...)`` returns the YAML text of a whole `add-lightning fit` config: data
(synthetic clips of 0.5 s in the ESC-50 layout, or any ``dataset`` block), a randomly
initialised one-layer AST whose input matches the features, and a quiet CPU trainer.
"""

from __future__ import annotations

from pathlib import Path

import yaml

__all__ = ["synthetic_dataset", "tiny_ast", "tiny_cv_config", "tiny_run_config"]


def tiny_ast(max_length: int = 48, num_mel_bins: int = 32, **changes: object) -> dict:
    """Init args of a randomly initialised ``ASTBackbone`` of width 32 with one layer, for
    ``[B, max_length, num_mel_bins]`` features; ``changes`` replace or add arguments."""
    return {
        "pretrained": None,
        "max_length": max_length,
        "num_mel_bins": num_mel_bins,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        **changes,
    }


def synthetic_dataset(
    root: str | Path, num_classes: int = 3, clips_per_class: int = 4, num_folds: int = 2
) -> dict:
    """A ``SyntheticDataset`` block: 0.5-s clips, 2 folds by default."""
    return {
        "class_path": "add_lightning.data.SyntheticDataset",
        "init_args": {
            "root": str(root),
            "num_classes": num_classes,
            "clips_per_class": clips_per_class,
            "num_folds": num_folds,
            "duration_s": 0.5,
        },
    }


def tiny_run_config(
    dataset: dict,
    cache: str | Path | None = None,
    frames: int = 48,
    lr: float = 1e-3,
    max_epochs: int = 1,
    add_loss: bool = False,
    batch_size: int = 4,
    optimizer: dict | None = None,
    data_args: dict | None = None,
    **trainer: object,
) -> str:
    """YAML of a fit config: ``dataset`` (fold 1 held out), 32 mel bins x ``frames``, tiny AST.

    ``optimizer`` replaces the default Adam with learning rate ``lr``; ``data_args`` are more
    arguments of the data module (``mixup``, ...), ``trainer`` more of the trainer.
    """
    model: dict = {
        "backbone": {
            "class_path": "add_lightning.models.ASTBackbone",
            "init_args": tiny_ast(frames, 32),
        },
        "optimizer": optimizer or {"class_path": "torch.optim.Adam", "init_args": {"lr": lr}},
    }
    if add_loss:
        model["loss"] = {
            "class_path": "add_lightning.losses.ClassificationLoss",
            "init_args": {"embedding": {"class_path": "add_lightning.losses.ADDLoss"}},
        }
    data = {
        "dataset": dataset,
        "fold": 1,
        "features": {"num_mel_bins": 32, "target_frames": frames},
        "batch_size": batch_size,
        **(data_args or {}),
    }
    if cache is not None:
        data["cache_dir"] = str(cache)
    config = {
        "data": {"class_path": "add_lightning.data.AudioDataModule", "init_args": data},
        "model": {"class_path": "add_lightning.models.AudioClassifier", "init_args": model},
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": max_epochs,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            **trainer,
        },
    }
    return yaml.safe_dump(config, sort_keys=False)


def tiny_cv_config(root: Path) -> str:
    """Synthetic data written to ``root`` (3 classes x 4 clips of 0.5 s, 2 folds), a one-layer
    random AST, CE + ADD, 2 epochs, deterministic: the config of the `cv` tests."""
    return tiny_run_config(synthetic_dataset(root), max_epochs=2, add_loss=True, deterministic=True)
