"""Configs of tiny runs that several test modules train: synthetic audio and a one-layer AST.

``tiny_run_config(...)`` returns the YAML text of a whole `add-lightning fit` config: data
(synthetic clips of 0.5 s in the ESC-50 layout, or any ``dataset`` block), a randomly
initialised one-layer AST whose input matches the features, and a quiet CPU trainer.
"""

from __future__ import annotations

from pathlib import Path

import yaml

__all__ = ["tiny_run_config"]


def synthetic_dataset(root: str | Path, num_classes: int = 3, clips_per_class: int = 4) -> dict:
    """A ``SyntheticDataset`` block: 0.5-s clips, 2 folds."""
    return {
        "class_path": "add_lightning.data.SyntheticDataset",
        "init_args": {
            "root": str(root),
            "num_classes": num_classes,
            "clips_per_class": clips_per_class,
            "num_folds": 2,
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
    **trainer: object,
) -> str:
    """YAML of a fit config: ``dataset`` (fold 1 held out), 32 mel bins x ``frames``, tiny AST."""
    model: dict = {
        "backbone": {
            "class_path": "add_lightning.models.ASTBackbone",
            "init_args": {
                "pretrained": None,
                "max_length": frames,
                "num_mel_bins": 32,
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 37,
            },
        },
        "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": lr}},
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
        "batch_size": 4,
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
