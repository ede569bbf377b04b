"""The training module: backbone -> embedding -> linear head, trained with a ClassificationLoss."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from add_lightning.checks import check_int
from add_lightning.losses import ClassificationLoss
from add_lightning.metrics import EmbeddingGeometry, EmbeddingRetrieval
from add_lightning.models.backbones.base import Backbone
from add_lightning.models.checkpoint_hooks import (
    BACKBONE_SOURCE_KEY,
    check_classes,
    make_self_contained,
)
from add_lightning.models.embedding_metrics import embedding_scalars, update_embedding_metrics
from add_lightning.models.finite_loss import check_finite_loss
from add_lightning.models.hyperparameters import hyperparameters_from_config, unsaved_arguments
from add_lightning.models.optim import configure_optimization
from add_lightning.models.sync_free_metrics import SyncFreeF1Score, WeightedStepMean
from add_lightning.tensor_utils import hard_targets, padding_mask_from_lengths

__all__ = ["BACKBONE_SOURCE_KEY", "AudioClassifier", "hyperparameters_from_config"]


class AudioClassifier(LightningModule):
    """Audio classifier ``g(f(x))``: a backbone ``f`` gives embeddings, a linear head ``g`` logits.

    The loss sees both (``loss(embeddings, logits, target)``), so cross-entropy, focal loss,
    CE + ADD or CE + OPL are configurations of ``loss``. Logged: ``train/loss`` and each named
    loss term (``train/ce``, ``train/add/mu_p``, ...) as epoch means weighted by clips, the loss
    per step too; ``{train,val,test}/acc`` (micro) and ``/f1`` (macro); ``{val,test}/loss`` and
    terms; the scalars of :class:`~add_lightning.metrics.EmbeddingGeometry` and
    :class:`~add_lightning.metrics.EmbeddingRetrieval` (``{val,test}/geometry/<key>``,
    ``{val,test}/retrieval/<key>``). The last test epoch's geometry stays in
    :attr:`last_test_statistics` for :class:`~add_lightning.models.ClassPairHeatmaps`. A
    training step waits for the device once, to check that the loss is finite.

    With ``unseen_class_names`` the test batches hold only those classes (held out of training,
    ids in that list): the test epoch logs the geometry and retrieval of their embeddings alone.

    Built within :func:`hyperparameters_from_config` (as ``AddLightningCLI`` builds it), the
    module arguments are saved as their config: ``load_from_checkpoint(path)`` needs nothing but
    the file; built in Python, pass them again (``load_from_checkpoint(path, backbone=...)``).

    Args:
        backbone: The embedding extractor (:class:`~add_lightning.models.backbones.Backbone`).
        num_classes: Number of classes ``C`` (linked from the data module by the CLI).
        loss: Training loss; None means cross-entropy alone.
        optimizer: Callable ``params -> Optimizer``; ``fit`` refuses None (evaluation does not).
        scheduler: Callable ``optimizer -> LRScheduler`` stepped once per epoch, or None.
        freeze_backbone: Linear probe: the backbone is frozen (kept in eval mode, left out of
            the optimizer) and only the head trains.
        class_names: Names of the classes in id order (linked from the data module by the CLI).
        unseen_class_names: The classes of the test batches when they were held out of training
            (linked from the data module by the CLI); None: the trained classes.
        knn_k: Neighbourhood sizes of the logged k-NN accuracies ``retrieval/knn<k>_acc``.
        val_retrieval: Compute the retrieval metrics at every validation epoch too (a few times
            the geometry's cost on a CPU); the test epoch always does.
        log_terms_per_step: Log every term's step value too (``train/<term>_step``).

    Shape:
        - features: ``[B, T, F]`` (waveforms: ``[B, N]``)
        - embeddings: ``[B, D]``
        - logits: ``[B, C]``
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        loss: ClassificationLoss | None = None,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        freeze_backbone: bool = False,
        class_names: list[str] | None = None,
        unseen_class_names: list[str] | None = None,
        knn_k: tuple[int, ...] = (5,),
        val_retrieval: bool = True,
        log_terms_per_step: bool = False,
    ) -> None:
        super().__init__()
        check_int("num_classes", num_classes, minimum=2)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"Expected {num_classes} `class_names` (one per class) but got {len(class_names)}"
            )
        if not isinstance(backbone, Backbone):
            raise TypeError(
                "Expected argument `backbone` to be an add_lightning.models.backbones.Backbone "
                f"(an nn.Module with an int `embedding_dim`) but got {type(backbone).__name__}"
            )
        self.save_hyperparameters(ignore=unsaved_arguments())
        self.num_classes = num_classes
        self.class_names = None if class_names is None else list(class_names)
        self.unseen_class_names = None if unseen_class_names is None else list(unseen_class_names)
        self.freeze_backbone = freeze_backbone
        self.log_terms_per_step = log_terms_per_step
        self.backbone = backbone
        self.head = nn.Linear(backbone.embedding_dim, num_classes)
        self.loss = loss if loss is not None else ClassificationLoss()
        self.optimizer = optimizer
        self.scheduler = scheduler
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        # Lightning's model summary counts FLOPs on a forward pass of this input
        shape = backbone.input_shape
        if shape is not None and None not in shape:
            self.example_input_array = torch.zeros(1, *shape)

        # validate_args=False: the loss has checked the labels (checking waits for the device)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.train_f1 = SyncFreeF1Score(num_classes)
        self.val_f1 = SyncFreeF1Score(num_classes)
        self.test_f1 = SyncFreeF1Score(num_classes)
        # one per loss term, made at the first step (the terms are the loss's)
        self.train_means = nn.ModuleDict()
        self._logged_in_epoch: set[str] = set()  # the training metrics logged this epoch
        self.val_geometry = EmbeddingGeometry(num_classes)
        self.val_retrieval = EmbeddingRetrieval(num_classes, knn_k) if val_retrieval else None
        test_classes = num_classes if unseen_class_names is None else len(unseen_class_names)
        self.test_geometry = EmbeddingGeometry(test_classes)
        self.test_retrieval = EmbeddingRetrieval(test_classes, knn_k)
        #: EmbeddingGeometry's output of the last test epoch (None before one) and the training
        #: step it belongs to.
        self.last_test_statistics: dict[str, Tensor] | None = None
        self.last_test_step_number = 0
        self._checkpoint_global_step = 0  # of the checkpoint loaded, if any
        self._backbone_source: dict[str, Any] | None = None  # see on_load_checkpoint

    # ------------------------------------------------------------------ model
    def embed(
        self, features: Tensor, padding_mask: Tensor | None = None, num_frames: Tensor | None = None
    ) -> Tensor:
        """Backbone embeddings. Shape: ``[B, T, F] -> [B, D]`` (waveforms: ``[B, N]``).

        ``padding_mask`` ``[B, T]`` (True = padding), or else one made from ``num_frames``
        ``[B]`` (valid frames), goes to a backbone that accepts one; AST sees every frame.
        """
        if padding_mask is None and num_frames is not None and self.backbone.accepts_padding_mask:
            padding_mask = padding_mask_from_lengths(num_frames, features.shape[1])
        if padding_mask is None:
            return self.backbone(features)
        return self.backbone(features, padding_mask=padding_mask)

    def forward(
        self, features: Tensor, padding_mask: Tensor | None = None, num_frames: Tensor | None = None
    ) -> Tensor:
        """Class logits. Shape: ``[B, T, F] -> [B, C]``."""
        return self.head(self.embed(features, padding_mask, num_frames))

    def _embed_batch(self, batch: dict[str, Any]) -> Tensor:
        return self.embed(batch["features"], batch.get("padding_mask"), batch.get("num_frames"))

    def train(self, mode: bool = True) -> AudioClassifier:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # linear probe: no dropout in the frozen backbone
        return self

    # ------------------------------------------------------------------ steps
    def _step(self, batch: dict[str, Any], stage: str) -> tuple[Tensor, Tensor, Tensor]:
        embeddings = self._embed_batch(batch)
        logits = self.head(embeddings)
        total, terms = self.loss(embeddings, logits, batch["target"])
        values = {"loss": total, **terms}
        check_finite_loss(values, batch, stage, self.current_epoch, self.global_step)
        labels = hard_targets(batch["target"])
        metrics = {"acc": getattr(self, f"{stage}_acc"), "f1": getattr(self, f"{stage}_f1")}
        for metric in metrics.values():
            metric.update(logits, labels)
        if stage == "train":
            self._log_train_values(values, metrics, clips=labels.shape[0])
            return total, embeddings, labels
        for name, metric in metrics.items():
            self.log(
                f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "acc"
            )
        for name, value in values.items():
            # a float: Lightning averages integer batch sizes over processes with integer
            # division, which biases the mean over uneven evaluation shards
            self.log(
                f"{stage}/{name}",
                value,
                on_epoch=True,
                prog_bar=name == "loss",
                batch_size=float(labels.shape[0]),
                sync_dist=True,
            )
        return total, embeddings, labels

    def _log_train_values(
        self, values: dict[str, Tensor], metrics: dict[str, Metric], clips: int
    ) -> None:
        """Epoch values of ``train/acc``, ``train/f1`` and the loss values (means over all
        processes' steps weighted by clips); step values (this process's; the loss alone unless
        ``log_terms_per_step``) at the steps the logger writes, copied to the host together:
        Lightning reads a progress-bar step value back at every later step of the epoch.

        The means are updated, never called: logged ``on_step`` they get the names of
        ``self.log(on_step=True, on_epoch=True)`` (``train/<name>``, ``train/<name>_epoch``)
        but no step value.
        """
        for name, metric in metrics.items():
            self._log_once_per_epoch(f"train/{name}", metric, on_step=False)
        for name, value in values.items():
            key = name.replace("/", "__")  # a ModuleDict key holds no "/"
            if key not in self.train_means:  # the terms are the loss's: known at its first step
                self.train_means[key] = WeightedStepMean().to(value.device)
            self.train_means[key].update(value, clips)
            self._log_once_per_epoch(
                f"train/{name}",
                self.train_means[key],
                prog_bar=name == "loss",
                metric_attribute=f"train_means.{key}",  # made after Lightning's metric lookup
            )
        trainer = self.trainer  # Lightning writes every `log_every_n_steps` optimizer steps
        every, step = trainer.log_every_n_steps, trainer.global_step + 1
        if trainer.fast_dev_run or trainer.should_stop or (every > 0 and step % every == 0):
            names = [name for name in values if name == "loss" or self.log_terms_per_step]
            on_host = torch.stack([values[name].detach().float() for name in names]).cpu()
            for name, value in zip(names, on_host, strict=True):
                self.log(f"train/{name}_step", value, on_epoch=False, prog_bar=name == "loss")

    def _log_once_per_epoch(self, name: str, metric: Metric, **kwargs: Any) -> None:
        """Logs a metric object at its first update in the training epoch: Lightning computes
        its epoch value from all the epoch's updates, and each call costs it about 0.3 ms
        (logging the 9 at every step made the quickstart's steps 10 % slower:
        ``benchmarks/README.md``)."""
        if name not in self._logged_in_epoch:
            self._logged_in_epoch.add(name)
            self.log(name, metric, on_epoch=True, **kwargs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, embeddings, labels = self._step(batch, "val")
        update_embedding_metrics(embeddings, labels, self.val_geometry, self.val_retrieval)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.unseen_class_names is not None:  # held-out classes: embeddings only, no head
            embeddings, labels = self._embed_batch(batch), hard_targets(batch["target"])
        else:
            _, embeddings, labels = self._step(batch, "test")
        update_embedding_metrics(embeddings, labels, self.test_geometry, self.test_retrieval)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Embeddings, logits, targets and clip ids of a batch (see ``EmbeddingWriter``)."""
        embeddings = self._embed_batch(batch)
        return {
            "embeddings": embeddings,
            "logits": self.head(embeddings),
            "target": batch.get("target"),
            "clip_id": batch.get("clip_id"),
        }

    # ------------------------------------------------------------ epoch hooks
    def _log_embedding_metrics(self, stage: str) -> dict[str, Tensor]:
        metrics = getattr(self, f"{stage}_geometry"), getattr(self, f"{stage}_retrieval")
        scalars, statistics = embedding_scalars(stage, *metrics)
        self.log_dict(scalars, on_epoch=True)
        return statistics

    def _evaluation_step_number(self) -> int:
        """The training step this evaluation belongs to (TensorBoard's x-axis): `validate`/`test`
        of a checkpoint run at Lightning's step 0, so the checkpoint's step is logged as
        ``step``, Lightning's documented custom x-axis."""
        trained = self._checkpoint_global_step
        if self.trainer.state.fn != "fit" and self.trainer.global_step == 0 and trained > 0:
            self.log("step", float(trained), on_epoch=True)
            return trained
        return self.global_step

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.backbone.release_dropped_gradients()

    def on_train_epoch_start(self) -> None:
        self._logged_in_epoch.clear()
        if self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_epoch=True)

    def on_train_epoch_end(self) -> None:
        for key, value in self.backbone.epoch_statistics().items():
            self.log(f"train/{key}", value, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        self._log_embedding_metrics("val")
        self._evaluation_step_number()

    def on_test_epoch_end(self) -> None:
        self.last_test_statistics = self._log_embedding_metrics("test")
        self.last_test_step_number = self._evaluation_step_number()

    # ------------------------------------------------------------- optimizers
    def configure_optimizers(self) -> Any:
        """The optimizer over trainable parameters (frozen ones are left out), epoch schedule."""
        try:
            run_epochs = self.trainer.max_epochs
        except (RuntimeError, AttributeError):  # no Trainer attached (or Fabric's, without one)
            run_epochs = None
        parameters = [p for p in self.parameters() if p.requires_grad]
        return configure_optimization(self.optimizer, self.scheduler, parameters, run_epochs)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Makes the checkpoint loadable without the backbone's pretrained weights."""
        make_self_contained(checkpoint, self.backbone, self._backbone_source)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuses a checkpoint whose head has another number of classes than this model."""
        check_classes(checkpoint, self.num_classes, self.class_names)
        self._checkpoint_global_step = int(checkpoint.get("global_step", 0) or 0)
        # a model resumed from a self-contained checkpoint keeps the original backbone source
        self._backbone_source = checkpoint.get(BACKBONE_SOURCE_KEY)
