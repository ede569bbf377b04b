"""Writes the outputs of ``predict`` (embeddings, logits, targets, clip ids) to one ``.npz``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from add_lightning.atomic import atomic_path
from add_lightning.models.classifier import AudioClassifier
from add_lightning.tensor_utils import hard_targets

__all__ = ["EmbeddingWriter", "save_npz_atomic"]


def save_npz_atomic(path: str, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` as ``.npz`` via a temporary file and ``os.replace``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def _to_numpy(value: Tensor) -> np.ndarray:
    return value.detach().float().cpu().numpy()


class EmbeddingWriter(BasePredictionWriter):
    """Collect ``AudioClassifier.predict_step`` outputs and write them to one ``.npz`` file.

    Arrays: ``embeddings`` [N, D] float32, ``logits`` [N, C] float32, ``targets`` [N] int64
    (argmax of soft targets; -1 when the data has no targets), ``clip_ids`` [N] str and
    ``class_names`` [C] str (class indices as strings when the model has no names). Load with
    ``numpy.load(path)`` (no pickle needed).

    Under DDP every process writes its part next to ``output_path``; after a barrier rank 0
    merges the parts (rank order, duplicate clip ids from sampler padding dropped) and removes
    them, so the row order then is not the data set order: join on ``clip_ids``.

    Args:
        output_path: Destination ``.npz`` file (parent directories are created); None means
            ``<trainer.log_dir>/predictions.npz``.
        class_names: The names that the targets index; None means the model's ``class_names``
            (pass the data's when the predicted split holds other classes, e.g. held-out ones).
    """

    def __init__(
        self, output_path: str | None = None, class_names: Sequence[str] | None = None
    ) -> None:
        super().__init__(write_interval="batch")
        if output_path is not None and not str(output_path).endswith(".npz"):
            raise ValueError(
                f"Expected argument `output_path` to end with '.npz' but got {output_path!r}"
            )
        self.output_path = None if output_path is None else str(output_path)
        self.class_names = None if class_names is None else list(class_names)
        self._rows: dict[str, list[Any]] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.output_path is None:  # resolved here: log_dir is broadcast from rank 0
            log_dir = trainer.log_dir or trainer.default_root_dir
            self.output_path = os.path.join(log_dir, "predictions.npz")

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._rows = {"embeddings": [], "logits": [], "targets": [], "clip_ids": []}

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: dict[str, Any],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        logits = prediction["logits"]
        target = prediction.get("target")
        if target is None:
            targets = np.full(logits.shape[0], -1, dtype=np.int64)
        else:
            targets = hard_targets(target).detach().cpu().numpy().astype(np.int64)
        clip_ids = prediction.get("clip_id")
        if clip_ids is None:
            clip_ids = [f"{dataloader_idx}-{batch_idx}-{i}" for i in range(logits.shape[0])]
        self._rows["embeddings"].append(_to_numpy(prediction["embeddings"]))
        self._rows["logits"].append(_to_numpy(logits))
        self._rows["targets"].append(targets)
        self._rows["clip_ids"].extend(str(clip_id) for clip_id in clip_ids)

    def _local_arrays(self, pl_module: LightningModule) -> dict[str, np.ndarray]:
        model = pl_module if isinstance(pl_module, AudioClassifier) else None
        class_names = self.class_names or (model.class_names if model else None)
        num_classes = model.num_classes if model else 0
        if class_names is None:
            class_names = [str(i) for i in range(num_classes)]
        if self._rows["embeddings"]:
            embeddings = np.concatenate(self._rows["embeddings"]).astype(np.float32)
            logits = np.concatenate(self._rows["logits"]).astype(np.float32)
            targets = np.concatenate(self._rows["targets"]).astype(np.int64)
        else:
            embedding_dim = model.backbone.embedding_dim if model else 0
            embeddings = np.zeros((0, embedding_dim), dtype=np.float32)
            logits = np.zeros((0, num_classes), dtype=np.float32)
            targets = np.zeros(0, dtype=np.int64)
        return {
            "embeddings": embeddings,
            "logits": logits,
            "targets": targets,
            "clip_ids": np.asarray(self._rows["clip_ids"], dtype=str),
            "class_names": np.asarray(class_names, dtype=str),
        }

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        arrays = self._local_arrays(pl_module)
        self._rows = {}
        if trainer.world_size == 1:
            save_npz_atomic(self.output_path, **arrays)
            # Lightning's own channel, so that the console shows where the file went
            rank_zero_info(f"Wrote {len(arrays['targets'])} predictions to {self.output_path}")
            return
        part = f"{self.output_path[: -len('.npz')]}.rank{trainer.global_rank}.npz"
        save_npz_atomic(part, **arrays)
        trainer.strategy.barrier("EmbeddingWriter.parts")
        if trainer.is_global_zero:
            self._merge_parts(trainer.world_size)
        trainer.strategy.barrier("EmbeddingWriter.merged")

    def _merge_parts(self, world_size: int) -> None:
        stem = self.output_path[: -len(".npz")]
        paths = [f"{stem}.rank{rank}.npz" for rank in range(world_size)]
        parts = []
        for path in paths:
            with np.load(path) as data:
                parts.append({key: data[key] for key in data.files})
        merged = {
            key: np.concatenate([part[key] for part in parts])
            for key in ("embeddings", "logits", "targets", "clip_ids")
        }
        _, first = np.unique(merged["clip_ids"], return_index=True)
        keep = np.sort(first)  # first occurrence of each clip, in rank order
        merged = {key: value[keep] for key, value in merged.items()}
        merged["class_names"] = parts[0]["class_names"]
        save_npz_atomic(self.output_path, **merged)
        for path in paths:
            os.remove(path)
        rank_zero_info(
            f"Merged {len(keep)} predictions of {world_size} processes into {self.output_path}"
        )
