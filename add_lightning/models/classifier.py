"""The training module: backbone -> embedding -> linear head, trained with a ClassificationLoss."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from add_lightning.checks import check_int
from add_lightning.losses import ClassificationLoss
from add_lightning.metrics import EmbeddingGeometry, EmbeddingRetrieval
from add_lightning.models.optim import describe_optimizer
from add_lightning.tensor_utils import hard_targets, padding_mask_from_lengths

__all__ = ["BACKBONE_SOURCE_KEY", "AudioClassifier", "hyperparameters_from_config"]

#: Checkpoint key of the backbone's hyperparameters as given for training (e.g. its pretrained
#: weights), kept beside the self-contained ones that replace them (``on_save_checkpoint``).
BACKBONE_SOURCE_KEY = "add_lightning_backbone_source"

log = logging.getLogger(__name__)


# No default optimizer: the right one depends on what is trained (the paper's Adam at 6.7e-6
# fine-tunes a pretrained AST and leaves a randomly initialised one at chance), so a model
# without one is refused with the two settings the shipped recipes use.
_NO_OPTIMIZER = (
    "AudioClassifier has no `optimizer`; set `model.init_args.optimizer`, e.g. "
    "{class_path: torch.optim.AdamW, init_args: {lr: 2.0e-3, weight_decay: 0.05}} to train a "
    "randomly initialised backbone (configs/experiments/ast_tiny_cpu.yaml) or "
    "{class_path: torch.optim.Adam, init_args: {lr: 6.7e-6, betas: [0.95, 0.999], "
    "weight_decay: 5.0e-6}} to fine-tune a pretrained AST (configs/experiments/ast_esc50.yaml)"
)

# The arguments that are live objects when the model is built in Python (see AudioClassifier).
_MODULE_ARGUMENTS = ("backbone", "loss", "optimizer", "scheduler")
_FROM_CONFIG: ContextVar[bool] = ContextVar(
    "add_lightning_hyperparameters_from_config", default=False
)


@contextlib.contextmanager
def hyperparameters_from_config() -> Iterator[None]:
    """Within it, an :class:`AudioClassifier` built saves ``backbone``, ``loss``, ``optimizer``
    and ``scheduler`` as hyperparameters too.

    For a model built from a parsed config (:class:`~add_lightning.lightning_cli.AddLightningCLI`
    wraps its instantiation in it): LightningCLI then gives ``save_hyperparameters`` the config
    (``class_path``/``init_args`` entries), which ``load_from_checkpoint`` rebuilds the modules
    from. Outside it those four arguments are the live objects given in Python, which are not
    hyperparameters, and are left out.
    """
    token = _FROM_CONFIG.set(True)
    try:
        yield
    finally:
        _FROM_CONFIG.reset(token)


class AudioClassifier(LightningModule):
    """Audio classifier ``g(f(x))``: a backbone ``f`` gives embeddings, a linear head ``g`` logits.

    The loss sees both (``loss(embeddings, logits, target)``), so cross-entropy, focal loss,
    CE + ADD or CE + OPL are configurations of ``loss``. Logged: ``train/loss`` (per logging
    step and per epoch) and every named loss term (``train/ce``, ``train/add/mu_p``, ...; per
    epoch, per step too with ``log_terms_per_step``), ``{train,val,test}/acc``
    (micro accuracy) and ``/f1`` (macro F1), ``val/loss``, ``test/loss``, the scalar embedding
    statistics ``{val,test}/geometry/<key>`` of :class:`~add_lightning.metrics.EmbeddingGeometry`,
    the retrieval metrics ``{val,test}/retrieval/<key>`` of
    :class:`~add_lightning.metrics.EmbeddingRetrieval` (``precision_at_1``, ``r_precision``,
    ``map_at_r``, ``knn<k>_acc``). The class-pair statistics of the last test epoch are kept
    in :attr:`last_test_statistics`, which :class:`~add_lightning.models.ClassPairHeatmaps`
    (a callback that ``AddLightningCLI`` adds) draws into TensorBoard.

    With ``unseen_class_names`` (classes held out of training, linked from the data module by
    the CLI) the test batches hold only those classes, with ids in that list: the test epoch
    then logs geometry and retrieval of their embeddings alone, without head, loss or accuracy.

    Built from YAML by LightningCLI (``backbone``, ``loss``, ``optimizer`` and ``scheduler`` are
    ``class_path``/``init_args`` entries); a checkpoint written under the CLI restores with
    ``AudioClassifier.load_from_checkpoint(path)``, with nothing but the file: the backbone is
    rebuilt from the architecture stored in it, not from the pretrained weights it started from
    (see :meth:`on_save_checkpoint`). Built in Python, the modules are not saved
    as hyperparameters: pass them again, ``load_from_checkpoint(path, backbone=...)``. The rule:
    the four module arguments are saved only when the model is built within
    :func:`hyperparameters_from_config`, as ``AddLightningCLI`` builds it; under a LightningCLI
    of your own, build it within that context too.

    Args:
        backbone: Embedding extractor with an ``embedding_dim`` attribute, ``[B, T, F] -> [B, D]``.
            A backbone whose ``accepts_padding_mask`` attribute is True (BEATs; speech
            encoders, whose ``T`` is samples) is called as
            ``backbone(features, padding_mask)`` with ``padding_mask [B, T]`` True at frames at
            or after the batch's ``num_frames``; other backbones (AST: its recipe has no mask)
            get the padded features alone.
        num_classes: Number of classes ``C`` (linked from the data module by the CLI).
        loss: Training loss; None means cross-entropy alone.
        optimizer: Callable ``params -> Optimizer``. Required to train (``fit``): None is
            refused there with a message naming what to add, since no one setting suits both
            a randomly initialised and a pretrained backbone; a model only evaluated or used
            for inference needs none. The optimizer is logged when training starts.
        scheduler: Callable ``optimizer -> LRScheduler`` stepped once per epoch, or None.
        freeze_backbone: Linear probe: the backbone is frozen (kept in eval mode, left out of
            the optimizer) and only the head trains.
        class_names: Names of the classes in id order (linked from the data module by the CLI).
        unseen_class_names: Names of the classes of the test batches when they were held out of
            training (linked from the data module by the CLI); None: the test batches hold the
            trained classes.
        knn_k: Neighbourhood sizes of the logged k-NN accuracies ``retrieval/knn<k>_acc``.
        val_retrieval: Compute the retrieval metrics at every validation epoch too (one
            ``N×N`` similarity matrix, each row ranked as deep as its class is large: a few
            times the cost of the geometry on a CPU); the test epoch always does.
        log_terms_per_step: Also log every loss term's step value (``train/<term>_step``,
            e.g. ``train/add/mu_p_step``) at the logging steps, not only ``train/loss_step``.
            Every term's epoch value (``train/<term>_epoch``) is logged either way. Each step
            name costs Lightning about 0.5 to 0.8 ms per logging step: CE + ADD's six terms
            at the quickstart's interval of 5 add about 4 % to its training time on 2 CPU
            cores (``benchmarks/README.md``).

    Shape:
        - features: ``[B, T, F]``
        - embeddings: ``[B, D]``
        - logits: ``[B, C]``
    """

    def __init__(
        self,
        backbone: nn.Module,
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
        embedding_dim = getattr(backbone, "embedding_dim", None)
        if not isinstance(embedding_dim, int):
            raise TypeError(
                "Expected argument `backbone` to be an nn.Module with an int attribute "
                f"`embedding_dim` but got {type(backbone).__name__} with {embedding_dim!r}"
            )
        # Built from a config (see hyperparameters_from_config) the hyperparameters are the
        # parsed config (class paths of the backbone, loss, optimizer, scheduler), enough for
        # load_from_checkpoint to rebuild them; in plain Python they are live objects, which
        # are not hyperparameters.
        self.save_hyperparameters(ignore=[] if _FROM_CONFIG.get() else list(_MODULE_ARGUMENTS))
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.unseen_class_names = None if unseen_class_names is None else list(unseen_class_names)
        self.freeze_backbone = freeze_backbone
        self.log_terms_per_step = log_terms_per_step
        self.backbone = backbone
        self.head = nn.Linear(embedding_dim, num_classes)
        self.loss = loss if loss is not None else ClassificationLoss()
        self.optimizer = optimizer
        self.scheduler = scheduler
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        # Lightning's model summary counts FLOPs (and shows in/out sizes) on a forward pass of
        # this input; without one its FLOPs column is all zeros. Backbones without a fixed
        # input shape (waveform encoders) have no such input.
        shape = getattr(self.backbone, "input_shape", None)
        if shape is not None and None not in shape:
            self.example_input_array = torch.zeros(1, *shape)

        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.train_f1 = MulticlassF1Score(num_classes, average="macro")
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self.test_f1 = MulticlassF1Score(num_classes, average="macro")
        self.val_geometry = EmbeddingGeometry(num_classes)
        self.val_retrieval = EmbeddingRetrieval(num_classes, knn_k) if val_retrieval else None
        test_classes = num_classes if unseen_class_names is None else len(unseen_class_names)
        self.test_geometry = EmbeddingGeometry(test_classes)
        self.test_retrieval = EmbeddingRetrieval(test_classes, knn_k)
        # Batch-size weighted epoch means of train/loss and each loss term, one per name (made
        # at the first step: the terms are the loss's). Their states stay on each process until
        # the epoch's compute, where torchmetrics synchronises them once; not checkpointed.
        self.train_means = nn.ModuleDict()
        self._train_mean_names: dict[str, str] = {}  # train_means key -> logged name
        self._train_epoch_logged = False  # set by the epoch's first training step
        self._train_means_logged = False  # set by the epoch's self.log of train_means
        # Training-step values not yet added to train_means / train_acc / train_f1: they are
        # added together at the epoch's last step (see _defer_train_updates).
        self._pending_means: list[tuple[tuple[str, ...], Tensor, int]] = []
        self._pending_predictions: list[tuple[Tensor, Tensor]] = []
        self._defer_train_updates = False
        #: EmbeddingGeometry's output of the last test epoch (None before one) and the training
        #: step it belongs to.
        self.last_test_statistics: dict[str, Tensor] | None = None
        self.last_test_step_number = 0

    # ------------------------------------------------------------------ model
    def embed(
        self,
        features: Tensor,
        padding_mask: Tensor | None = None,
        num_frames: Tensor | None = None,
    ) -> Tensor:
        """Backbone embeddings. Shape: ``[B, T, F] -> [B, D]`` (waveforms: ``[B, N]``).

        ``padding_mask`` (True = padding, as batches of ``WaveformDataModule`` carry it) is
        passed on to the backbone when given. Otherwise ``num_frames`` (``[B]``, each clip's
        frames before the zero padding, as ``AudioDataModule`` batches carry it) becomes the
        padding mask of a backbone whose ``accepts_padding_mask`` is True (BEATs, speech
        encoders: valid samples); other
        backbones (AST) then see every frame.
        """
        if padding_mask is None and num_frames is not None:
            if getattr(self.backbone, "accepts_padding_mask", False):
                padding_mask = padding_mask_from_lengths(num_frames, features.shape[1])
        if padding_mask is None:
            return self.backbone(features)
        return self.backbone(features, padding_mask=padding_mask)

    def forward(
        self,
        features: Tensor,
        padding_mask: Tensor | None = None,
        num_frames: Tensor | None = None,
    ) -> Tensor:
        """Class logits. Shape: ``[B, T, F] -> [B, C]``."""
        return self.head(self.embed(features, padding_mask, num_frames))

    def _embed_batch(self, batch: dict[str, Any]) -> Tensor:
        """Embeddings of a batch, with its padding mask or valid-frame counts when present."""
        return self.embed(batch["features"], batch.get("padding_mask"), batch.get("num_frames"))

    def train(self, mode: bool = True) -> AudioClassifier:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # linear probe: no dropout in the frozen backbone
        return self

    # --------------------------------------------------------------- training
    def _step(self, batch: dict[str, Any], stage: str) -> tuple[Tensor, Tensor, Tensor]:
        features, target = batch["features"], batch["target"]
        embeddings = self._embed_batch(batch)
        logits = self.head(embeddings)
        total, terms = self.loss(embeddings, logits, target)
        # one check (one device sync) for the total and every term
        if not torch.isfinite(
            torch.stack([total.float(), *(v.float() for v in terms.values())])
        ).all():
            self._stop_on_non_finite_loss(stage, total, terms, batch)
        # A float: Lightning sums integer batch sizes in an integer tensor and averages it over
        # processes with integer division, which biases the mean over uneven evaluation shards.
        batch_size = float(features.shape[0])
        first = False
        if stage == "train":
            first = not self._train_epoch_logged
            self._train_epoch_logged = True
            self._log_train_means({"loss": total, **terms}, batch_size, self._is_logging_step())
        else:  # no step values: Lightning synchronises the epoch means once
            self.log(
                f"{stage}/loss",
                total,
                on_epoch=True,
                prog_bar=True,
                batch_size=batch_size,
                sync_dist=True,
            )
            for name, value in terms.items():
                self.log(
                    f"{stage}/{name}", value, on_epoch=True, batch_size=batch_size, sync_dist=True
                )
        labels = hard_targets(target)
        accuracy, f1 = getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_f1")
        if stage == "train" and self._defer_train_updates:
            self._pending_predictions.append((logits.detach(), labels))
        else:  # update alone: the values are logged once per epoch
            accuracy.update(logits, labels)
            f1.update(logits, labels)
        if stage != "train" or first:
            # A metric object logged once in an epoch is computed (and synchronised) from all
            # of that epoch's updates at its end: logging it at every step only costs time.
            self.log(
                f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=stage != "train"
            )
            self.log(f"{stage}/f1", f1, on_step=False, on_epoch=True)
        return total, embeddings, labels

    def _is_logging_step(self) -> bool:
        """Whether the trainer sends this training step's values to the logger.

        Lightning writes step values every ``log_every_n_steps`` optimizer steps (and on
        ``fast_dev_run`` or a requested stop); values logged at other steps are never written.
        """
        trainer = self.trainer
        every = trainer.log_every_n_steps
        if trainer.fast_dev_run or trainer.should_stop:
            return True
        return every > 0 and (trainer.global_step + 1) % every == 0

    def _log_train_means(
        self, values: dict[str, Tensor], batch_size: float, log_now: bool = True
    ) -> None:
        """Logs ``train/<name>`` per step (this process's batch) and per epoch (all processes).

        The epoch value is the batch-size weighted mean of the step values of every process, as
        ``self.log(..., sync_dist=True)`` gives, but synchronised once per epoch, not per step:
        a ``MeanMetric`` per name, which every step's values reach (at once, or with
        ``_defer_train_updates`` at the epoch's last step) and which is logged once per epoch
        (see ``_log_epoch_train_means``). The step values are plain tensors logged as
        ``train/<name>_step`` (the name ``self.log(on_step=True, on_epoch=True)`` gives them),
        only when ``log_now``: at the steps whose values the logger writes, and only for
        ``loss`` unless ``log_terms_per_step``. One ``self.log`` costs Lightning about 0.5 to
        0.8 ms (a metric object's, with its ``forward`` for the step value, twice that), so a
        logging step of all of CE + ADD's 7 names costs 3 to 6 ms.
        ``trainer.callback_metrics`` holds the step values of the last logging step as
        ``train/<name>_step``; ``train/<name>`` is the last finished epoch's value.
        """
        if log_now:
            for name, value in values.items():
                if name != "loss" and not self.log_terms_per_step:
                    continue
                self.log(
                    f"train/{name}_step",
                    value.detach(),
                    on_step=True,
                    on_epoch=False,
                    prog_bar=name == "loss",
                )
        keys = tuple(name.replace("/", "__") for name in values)
        if self._defer_train_updates and all(k in self.train_means for k in keys):
            stacked = torch.stack([value.detach().float() for value in values.values()])
            self._pending_means.append((keys, stacked, int(batch_size)))
            return
        for key, (name, value) in zip(keys, values.items()):
            if key not in self.train_means:
                # "disable": no NaN check, which would wait for the device at every step (the
                # values are checked finite in _step). It also ignores `weight` (torchmetrics
                # 1.9), so the value is repeated once per clip instead: the same weighted mean.
                self.train_means[key] = MeanMetric(nan_strategy="disable").to(value.device)
                self._train_mean_names[key] = name
            self.train_means[key].update(value.detach().float().expand(int(batch_size)))
        if not self._defer_train_updates:  # an epoch of unknown length: register them now
            self._log_epoch_train_means()

    def _log_epoch_train_means(self) -> None:
        """Logs each ``train_means`` metric once in the epoch, for its epoch value.

        Lightning computes (and synchronises) an epoch value for what was logged in the epoch,
        from all of the metric's updates. ``on_step=True`` only gives the names
        ``train/<name>_epoch`` (and ``train/<name>`` in ``callback_metrics``) that
        ``self.log(on_step=True, on_epoch=True)`` gives: the metrics are updated, never called
        (no ``forward``), so they have no step value and add no step row.
        """
        if self._train_means_logged:
            return
        for key, metric in self.train_means.items():
            name = self._train_mean_names[key]
            self.log(
                f"train/{name}",
                metric,
                on_step=True,
                on_epoch=True,
                prog_bar=name == "loss",
                metric_attribute=f"train_means.{key}",
            )
        self._train_means_logged = True

    def _flush_train_updates(self) -> None:
        """Adds the deferred training-step values to the epoch metrics (see ``_defer_...``).

        Each step's value enters its mean repeated once per clip, as in ``_log_train_means``,
        so the epoch means are the same batch-size weighted means; the predictions enter the
        accuracy and F1 counts in one update.
        """
        if self._pending_means:
            groups: dict[tuple[str, ...], list[tuple[Tensor, int]]] = {}
            for keys, stacked, clips in self._pending_means:
                groups.setdefault(keys, []).append((stacked, clips))
            for keys, steps in groups.items():
                values = torch.stack([stacked for stacked, _ in steps])  # [steps, terms]
                counts = torch.tensor([clips for _, clips in steps], device=values.device)
                for column, key in enumerate(keys):
                    self.train_means[key].update(values[:, column].repeat_interleave(counts))
            self._pending_means.clear()
        if self._pending_predictions:
            logits = torch.cat([logits for logits, _ in self._pending_predictions])
            labels = torch.cat([labels for _, labels in self._pending_predictions])
            self.train_acc.update(logits, labels)
            self.train_f1.update(logits, labels)
            self._pending_predictions.clear()

    def _train_epoch_ends(self, batch_idx: int) -> bool:
        """Whether the training step ``batch_idx`` that just ended is its epoch's last."""
        trainer = self.trainer  # max_steps is -1 when unbounded
        return (
            batch_idx + 1 >= trainer.num_training_batches
            or trainer.should_stop
            or 0 <= trainer.max_steps <= trainer.global_step
        )

    def _stop_on_non_finite_loss(
        self, stage: str, total: Tensor, terms: dict[str, Tensor], batch: dict[str, Any]
    ) -> None:
        """Raises: training on (or reporting) a NaN/inf loss would only hide the cause."""
        bad_terms = [name for name, value in terms.items() if not torch.isfinite(value)]
        features_finite = bool(torch.isfinite(batch["features"]).all())
        clips = list(batch.get("clip_id") or [])
        raise FloatingPointError(
            f"The {stage} loss is {total.item()} at epoch {self.current_epoch}, global step "
            f"{self.global_step} (non-finite terms: {', '.join(bad_terms) or 'none'}; the input "
            f"features are {'finite' if features_finite else 'NOT finite'}; first clips: "
            f"{clips[:4]}). With finite features this means diverging weights: lower the "
            "learning rate, or use float32/bf16 instead of fp16."
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        total, _, _ = self._step(batch, "train")
        return total

    def _update_embedding_metrics(self, stage: str, embeddings: Tensor, labels: Tensor) -> None:
        for kind in ("geometry", "retrieval"):
            metric = getattr(self, f"{stage}_{kind}")
            if metric is not None:
                metric.update(embeddings.float(), labels)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, embeddings, labels = self._step(batch, "val")
        self._update_embedding_metrics("val", embeddings, labels)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.unseen_class_names is not None:  # held-out classes: embeddings only, no head
            embeddings = self._embed_batch(batch)
            labels = hard_targets(batch["target"])
        else:
            _, embeddings, labels = self._step(batch, "test")
        self._update_embedding_metrics("test", embeddings, labels)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Embeddings, logits, targets and clip ids of a batch (see ``EmbeddingWriter``)."""
        embeddings = self._embed_batch(batch)
        return {
            "embeddings": embeddings,
            "logits": self.head(embeddings),
            "target": batch.get("target"),
            "clip_id": batch.get("clip_id"),
        }

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Lets the backbone clear gradients it added only for DDP (BEATs layer drop)."""
        release = getattr(self.backbone, "release_dropped_gradients", None)
        if callable(release):
            release()

    def on_train_epoch_start(self) -> None:
        self._train_epoch_logged = self._train_means_logged = False
        # An epoch's values are added at its end; any left here come from a fit that stopped
        # with an error, and belong to no epoch of this one.
        self._pending_means.clear()
        self._pending_predictions.clear()
        # Per step only a stack of the loss values and the logits are kept, and they are added
        # to the epoch metrics at the last step: nine metric updates per step cost more than
        # the rest of Lightning's step (about 0.2 ms). Only where the epoch's length is known.
        self._defer_train_updates = math.isfinite(self.trainer.num_training_batches)
        if self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_epoch=True)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Before any callback's on_train_epoch_end reads (and caches) the epoch values. The
        # module's hook runs after the callbacks' on_train_batch_end, so a stop that one of
        # them requests here is seen.
        if self._train_epoch_ends(batch_idx):
            self._flush_train_updates()
            self._log_epoch_train_means()

    def on_train_epoch_end(self) -> None:
        self._flush_train_updates()
        # what a backbone reports of itself, e.g. HFAudioEncoder's layer weights
        statistics = getattr(self.backbone, "epoch_statistics", None)
        for key, value in (statistics() if callable(statistics) else {}).items():
            self.log(f"train/{key}", value, on_epoch=True)

    def _log_geometry(self, stage: str) -> dict[str, Tensor]:
        geometry = getattr(self, f"{stage}_geometry")
        statistics = geometry.compute()  # synchronised over processes by torchmetrics
        geometry.reset()
        for key, value in statistics.items():
            if value.ndim == 0:
                self.log(f"{stage}/geometry/{key}", value.float(), on_epoch=True)
        retrieval = getattr(self, f"{stage}_retrieval")
        if retrieval is not None:
            for key, value in retrieval.compute().items():
                self.log(f"{stage}/retrieval/{key}", value.float(), on_epoch=True)
            retrieval.reset()
        return statistics

    def _evaluation_step_number(self) -> int:
        """The training step this evaluation belongs to (TensorBoard's x-axis).

        `validate`/`test` of a checkpoint restore no training loop, so Lightning's step is 0 and
        their metrics would sit left of every training point, beside a one-point `epoch` chart.
        There the checkpoint's own step is logged as ``step``, Lightning's documented custom
        x-axis (it is not logged as a metric, and no `epoch` point is added).
        """
        trained = getattr(self, "_checkpoint_global_step", 0)
        if self.trainer.state.fn != "fit" and self.trainer.global_step == 0 and trained > 0:
            self.log("step", float(trained), on_epoch=True)
            return trained
        return self.global_step

    def on_validation_epoch_end(self) -> None:
        self._log_geometry("val")
        self._evaluation_step_number()

    def on_test_epoch_end(self) -> None:
        self.last_test_statistics = self._log_geometry("test")
        self.last_test_step_number = self._evaluation_step_number()

    # ------------------------------------------------------------- optimizers
    def configure_optimizers(self) -> Any:
        """The optimizer over trainable parameters (frozen ones are left out), epoch schedule."""
        if self.optimizer is None:
            raise ValueError(_NO_OPTIMIZER)
        parameters = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer(parameters)
        scheduler = None if self.scheduler is None else self.scheduler(optimizer)
        log.info(
            "Optimizer %s over %d trainable parameters, schedule %s",
            describe_optimizer(optimizer),
            sum(p.numel() for p in parameters),
            "none" if scheduler is None else type(scheduler).__name__,
        )
        if scheduler is None:
            return optimizer
        self._fit_schedule_to_trainer(scheduler)
        config = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}

    def _fit_schedule_to_trainer(self, scheduler: Any) -> None:
        """Gives a schedule with a length (``max_epochs``, e.g. ``WarmupCosineLR``) the run's.

        ``max_epochs=None`` takes ``trainer.max_epochs``; an explicit value that differs from
        it is kept, with a warning (the schedule then ends before or after the run).
        """
        set_max_epochs = getattr(scheduler, "set_max_epochs", None)
        if not callable(set_max_epochs):
            return
        try:
            run_epochs = self.trainer.max_epochs
        except (RuntimeError, AttributeError):  # no Trainer attached (or Fabric's, without one)
            return
        if scheduler.max_epochs is None:
            set_max_epochs(run_epochs)
        elif scheduler.max_epochs != run_epochs:
            rank_zero_warn(
                f"The scheduler's max_epochs={scheduler.max_epochs} differs from "
                f"trainer.max_epochs={run_epochs}; leave the scheduler's unset to follow the "
                "trainer"
            )

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Makes the checkpoint loadable without the backbone's pretrained weights.

        A backbone with a ``checkpoint_init_args()`` method (``ASTBackbone``, ``BEATsBackbone``,
        ``HFAudioEncoder``) gets its stored hyperparameters replaced by those arguments: its
        architecture (a speech encoder's whole transformers config and feature extractor
        settings), with the pretrained source (hub id, folder, file) set to None. Whatever
        rebuilds the model from the checkpoint (``load_from_checkpoint``, ``add-lightning test
        --ckpt_path``) then builds it with random weights, which the ``state_dict`` overwrites,
        instead of downloading or reading the weights the training started from. The
        hyperparameters as given are kept under :data:`BACKBONE_SOURCE_KEY`. The module's own
        ``hparams`` are left unchanged.
        """
        hparams = checkpoint.get(self.CHECKPOINT_HYPER_PARAMS_KEY)
        backbone = hparams.get("backbone") if isinstance(hparams, Mapping) else None
        rebuild = getattr(self.backbone, "checkpoint_init_args", None)
        if not isinstance(backbone, Mapping) or "init_args" not in backbone or rebuild is None:
            return  # built in Python (no backbone hyperparameters), or a backbone of its own
        # resumed from such a checkpoint, the model was built from the stored architecture
        source = getattr(self, "_backbone_source", None)
        init_args = {**backbone["init_args"], **rebuild()}
        if init_args != backbone["init_args"]:
            source = source or backbone
            # The stored hyperparameters may be `self.hparams` itself: copy, never mutate them.
            backbone = {**backbone, "init_args": init_args}
            checkpoint[self.CHECKPOINT_HYPER_PARAMS_KEY] = {**hparams, "backbone": backbone}
        if source is not None:
            checkpoint[BACKBONE_SOURCE_KEY] = copy.deepcopy(dict(source))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose head has another number of classes than this model."""
        self._checkpoint_global_step = int(checkpoint.get("global_step", 0) or 0)
        # a model resumed from a self-contained checkpoint keeps the original backbone source
        self._backbone_source = checkpoint.get(BACKBONE_SOURCE_KEY)
        head = checkpoint.get("state_dict", {}).get("head.weight")
        if head is not None and head.shape[0] != self.num_classes:
            raise ValueError(
                f"The checkpoint has a head for {head.shape[0]} classes but this model (and the "
                f"data it is linked to) has num_classes={self.num_classes}; use a checkpoint "
                "trained on the same classes, or the data module the checkpoint was trained with"
            )
        saved_names = checkpoint.get("hyper_parameters", {}).get("class_names")
        if saved_names is not None and self.class_names is not None:
            if list(saved_names) != self.class_names:
                rank_zero_warn(
                    "The checkpoint's class_names differ from this model's: "
                    f"{list(saved_names)[:5]}... vs {self.class_names[:5]}...; class ids may not "
                    "mean the same classes"
                )
