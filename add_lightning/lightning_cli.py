"""``add-lightning fit | validate | test | predict``: LightningCLI for one run.

Run layout. With ``--trainer.default_root_dir DIR`` (and no ``--trainer.logger`` of your own)
every file of the run lands directly in ``DIR``::

    DIR/config.yaml              # full config of `fit` (config_<subcommand>.yaml for the others)
    DIR/events.out.tfevents.*    # TensorBoard scalars and, after `test`, the class-pair heat maps
    DIR/hparams.yaml
    DIR/checkpoints/last.ckpt    # end of the latest epoch (resume with --ckpt_path last)
    DIR/checkpoints/best.ckpt    # best `val/acc` so far, when validation is not the test data
    DIR/predictions.npz          # written by `predict` (see EmbeddingWriter)

Without ``default_root_dir`` runs go to ``./lightning_logs/version_N/`` with the same content.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from add_lightning.checkpoint import (
    CheckpointRead,
    InputPipelineCheckpoint,
    SafeCheckpointIO,
    read_checkpoint,
    stored_pipeline,
)
from add_lightning.data.datamodule import AudioDataModule
from add_lightning.data.waveform_datamodule import WaveformDataModule
from add_lightning.models.classifier import AudioClassifier
from add_lightning.models.data_contract import DataSplits
from add_lightning.models.heatmaps import ClassPairHeatmaps
from add_lightning.models.hyperparameters import hyperparameters_from_config
from add_lightning.models.prediction import EmbeddingWriter
from add_lightning.run_log import EpochSummary, is_terminal, log_to_console, quiet_lightning
from add_lightning.workarounds import (
    ShortErrorParser,
    constructor_error,
    merge_checkpoint_hyperparameters,
    nested_nulls_as_objects,
    predicted_last_checkpoint,
    restore_ckpt_path,
    warn_about_replaced_model_arguments,
)

__all__ = ["AddLightningCLI", "check_checkpoint_file", "run_lightning_cli"]

_DESCRIPTION = (
    "Audio classification with the Angular Distance Distribution (ADD) loss. Subcommands "
    "fit/validate/test/predict train and evaluate one run (compose YAML files with --config); "
    "`add-lightning --help` lists every command."
)

# The config sections of the checkpoint callbacks (added in `add_arguments_to_parser`).
_CHECKPOINT_KEYS = ("checkpoint", "last_checkpoint")

# Two checkpoint callbacks with stable file names: the experiments runner and `--ckpt_path last`
# rely on DIR/checkpoints/{last,best}.ckpt; no version counter, so a re-run overwrites them.
# `last.ckpt` has a callback of its own, without a monitor, that writes it at the end of every
# training epoch: ModelCheckpoint's `save_last` rewrites it only when a top-k checkpoint is
# saved, i.e. when `val/acc` improves (Lightning 2.6), which left `last.ckpt` epochs behind.
_CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/acc",
    "checkpoint.mode": "max",
    "checkpoint.filename": "best",
    "checkpoint.save_top_k": 1,
    "checkpoint.save_last": False,
    "checkpoint.auto_insert_metric_name": False,
    "checkpoint.enable_version_counter": False,
    "last_checkpoint.monitor": None,
    "last_checkpoint.filename": ModelCheckpoint.CHECKPOINT_NAME_LAST,
    "last_checkpoint.save_top_k": 1,
    "last_checkpoint.save_last": False,
    "last_checkpoint.every_n_epochs": 1,
    "last_checkpoint.save_on_train_epoch_end": True,
    "last_checkpoint.auto_insert_metric_name": False,
    "last_checkpoint.enable_version_counter": False,
}


# `--ckpt_path` values that Lightning resolves itself rather than naming a file.
_SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def check_checkpoint_file(
    path: str | os.PathLike[str] | None, resume: bool = False
) -> CheckpointRead | None:
    """Reads ``--ckpt_path`` safely, unless it is None or a name that Lightning resolves.

    ``torch.load`` of an empty file raises a bare ``EOFError``, of a damaged one or one holding
    other objects an ``UnpicklingError`` advising ``weights_only=False``; none names the file.

    Args:
        path: ``--ckpt_path``.
        resume: Whether ``fit`` resumes from it (it must hold the training state too).

    Returns:
        The command's one read of the file (its tensors memory-mapped), None for no file.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not a Lightning checkpoint that loads with ``weights_only=True``
            (see :func:`~add_lightning.checkpoint.load_checkpoint`).
    """
    if path is None or str(path) in _SPECIAL_CKPT_PATHS or "://" in str(path):
        return None
    return read_checkpoint(path, resume=resume, argument="--ckpt_path")


def _unbounded(trainer_config: dict[str, Any]) -> bool:
    """Whether nothing but Lightning's default of 1000 epochs would stop ``fit``."""
    return (
        trainer_config.get("max_epochs") is None
        and trainer_config.get("max_steps", -1) in (None, -1)
        and trainer_config.get("max_time") is None
        and not trainer_config.get("fast_dev_run")
    )


def _check_input_shape(datamodule: Any, model: Any) -> None:
    """Refuses data whose frames, mel bins or sample rate differ from the backbone's.

    Caught here, a mismatch of ``data...features.target_frames`` and the backbone's
    ``max_length`` costs nothing; at the first forward pass it costs the statistics and cache
    build first.
    """
    if not isinstance(model, AudioClassifier) or not isinstance(datamodule, AudioDataModule):
        return  # another model or data module: its input is its own business
    backbone = model.backbone
    if isinstance(datamodule, WaveformDataModule):
        data_rate, model_rate = datamodule.sample_rate, backbone.sample_rate
        if model_rate is not None and data_rate != model_rate:
            raise ValueError(
                f"Expected the data's `sample_rate` {data_rate} to equal the backbone's "
                f"{model_rate}: the encoder was trained on audio at its rate. Set "
                f"--data.init_args.sample_rate {model_rate}."
            )
        return
    features, shape = datamodule.features, backbone.input_shape
    if shape is None:
        return
    frames, bins = shape
    given = (features.target_frames, features.num_mel_bins)
    if (frames is not None and given[0] != frames) or (bins is not None and given[1] != bins):
        raise ValueError(
            f"Expected the data's features to have the backbone's input shape: "
            f"`data.init_args.features.target_frames` {given[0]} and `num_mel_bins` {given[1]} "
            f"against the backbone's max_length {frames} and num_mel_bins {bins}. Make them "
            "agree (e.g. --data.init_args.features.target_frames "
            f"{frames} or --model.init_args.backbone.init_args.max_length {given[0]})."
        )


def _load_checkpoints_safely(section: Namespace) -> None:
    """Has the Trainer load ``--ckpt_path`` with ``weights_only=True`` (Lightning's argument).

    Its loads go through :class:`~add_lightning.checkpoint.SafeCheckpointIO` anyway; this also
    covers a CheckpointIO plugin of the user's, and refuses ``--weights_only false``.
    """
    if "weights_only" not in section:  # Lightning < 2.6 has no such argument
        return
    if section.get("weights_only") is False:
        raise ValueError(
            "Expected `--weights_only` to be true or left out but got false: checkpoints are "
            "data and load with weights_only=True, which is all that a checkpoint written by "
            "`add-lightning fit` needs."
        )
    section["weights_only"] = True


def _unseen_class_names(data: LightningDataModule) -> list[str] | None:
    """The data module's classes held out of training, None for data modules without any."""
    return data.unseen_class_names if isinstance(data, DataSplits) else None


class AddLightningCLI(LightningCLI):
    """LightningCLI for :class:`~add_lightning.models.AudioClassifier` and any LightningDataModule.

    Adds to LightningCLI: ``data.num_classes``/``data.class_names`` (and
    ``data.unseen_class_names`` where the data module has them) linked into the model, two
    configurable ModelCheckpoints: ``checkpoint`` (``best.ckpt`` by ``val/acc``) and
    ``last_checkpoint`` (``last.ckpt``, the end of every training epoch),
    :class:`~add_lightning.models.ClassPairHeatmaps` (the test's heat maps in TensorBoard),
    :class:`~add_lightning.checkpoint.InputPipelineCheckpoint` (the data module's input
    pipeline in every checkpoint), a TensorBoard logger whose directory is
    ``trainer.default_root_dir`` when given, and ``seed_everything: 0``. The optimizer and
    scheduler are the model's own arguments (``model.init_args.optimizer``/``scheduler``), not
    LightningCLI's top-level ones.

    Programmatic use: ``cli = AddLightningCLI(args=[...], run=False)`` builds ``cli.model``,
    ``cli.datamodule`` and ``cli.trainer`` without running anything.
    """

    def __init__(
        self, args: Sequence[str] | dict[str, Any] | None = None, run: bool = True
    ) -> None:
        quiet_lightning()
        super().__init__(
            model_class=AudioClassifier,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"description": _DESCRIPTION},
            parser_class=ShortErrorParser,
            args=(
                nested_nulls_as_objects(list(args))
                if isinstance(args, Sequence) and not isinstance(args, str)
                else args
            ),
            run=run,
        )

    def parse_arguments(
        self, parser: LightningArgumentParser, args: list[str] | dict[str, Any] | None
    ) -> None:
        # Same as LightningCLI minus its warning about `args` given while sys.argv is not empty:
        # programmatic callers (the experiments runner, tests) legitimately have both.
        if isinstance(args, dict | Namespace):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)
        subcommand = self.config.get("subcommand")
        section = self.config[subcommand] if subcommand else self.config
        if subcommand == "fit" and section.get("ckpt_path") == "last":
            last = predicted_last_checkpoint(section)
            if last is not None and last.is_file():
                # resolved here, not by the Trainer after the model is built, so that the model is
                # rebuilt from the checkpoint (as for a file path) without its pretrained weights
                section["ckpt_path"] = str(last)
                rank_zero_info(f"Resuming from {last} (`--ckpt_path last`)")
        # The link from data.num_classes replaces any value given for the model; keep the
        # given one to refuse a contradiction instead of replacing it silently.
        self._given_num_classes = section.get("model.init_args.num_classes")
        self._checkpoint = None
        if subcommand:
            _load_checkpoints_safely(section)
            self._ckpt_path = section.get("ckpt_path")
            # the command's one read of the file: the model's hyperparameters, the data's
            # input pipeline and the Trainer's restore (SafeCheckpointIO) take it
            self._checkpoint = check_checkpoint_file(self._ckpt_path, subcommand == "fit")
        if self._checkpoint is not None:
            if subcommand != "fit":
                warn_about_replaced_model_arguments(section, self._checkpoint.content)
            self.config = merge_checkpoint_hyperparameters(
                parser, self.config, self._checkpoint.content
            )

    # `--ckpt_path` as parse_arguments read it; None for no file (no `--ckpt_path`, or a name
    # such as "hpc" that the Trainer resolves and reads), or where parse_arguments is overridden
    _checkpoint: CheckpointRead | None = None
    _ckpt_path: str | None = None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data.num_classes", "model.init_args.num_classes", apply_on="instantiate"
        )
        parser.link_arguments(
            "data.class_names", "model.init_args.class_names", apply_on="instantiate"
        )
        parser.link_arguments(
            "data",
            "model.init_args.unseen_class_names",
            compute_fn=_unseen_class_names,
            apply_on="instantiate",
        )
        # As `add_lightning_class_args` adds them, but passed to the Trainer by
        # `instantiate_trainer` (which leaves them out where they do not apply).
        for key in _CHECKPOINT_KEYS:
            parser.add_class_arguments(ModelCheckpoint, key, fail_untyped=False, sub_configs=True)
        parser.set_defaults(_CHECKPOINT_DEFAULTS)

    def instantiate_classes(self) -> None:
        self._instantiate_classes()
        given = getattr(self, "_given_num_classes", None)
        if given is not None and given != self.model.num_classes:
            raise ValueError(
                f"Expected `model.init_args.num_classes` to be left out or to equal the data's "
                f"{self.model.num_classes} classes but got {given}: the number of classes comes "
                "from the data module (`data.num_classes`); to train on fewer classes, give the "
                "dataset fewer classes."
            )
        self._restore_data_pipeline()  # before the shape check: the checkpoint's features
        _check_input_shape(self.datamodule, self.model)

    def _instantiate_classes(self) -> None:
        try:
            with hyperparameters_from_config():  # the model saves the parsed config
                super().instantiate_classes()
        except ValueError as error:
            root = constructor_error(error)  # the constructor's own, which says what to do
            if root is error:
                raise
            raise root from None

    def before_instantiate_classes(self) -> None:
        # `fit` writes config.yaml (what the experiments runner reads); the other subcommands
        # write config_<subcommand>.yaml beside it instead of overwriting it.
        stage = self.subcommand or "fit"
        name = "config.yaml" if stage == "fit" else f"config_{stage}.yaml"
        self.save_config_kwargs["config_filename"] = name
        if self._checkpoint is not None:  # taken out by merge_checkpoint_hyperparameters
            restore_ckpt_path(self.config, self._ckpt_path)

    def _restore_data_pipeline(self) -> None:
        """Gives the data module the state stored in ``--ckpt_path`` before the run starts.

        Lightning restores a checkpoint (``InputPipelineCheckpoint.on_load_checkpoint``) only
        after ``prepare_data`` and ``setup``, which would first compute normalisation statistics
        from the files on disk (or fail if the training files are gone); the input pipeline the
        model was trained with is applied here instead, before either.
        """
        # None without a subcommand (run=False) or a file: no --ckpt_path, or a special name
        # ("last") that Lightning resolves and restores itself
        if self._checkpoint is None:
            return
        pipeline = stored_pipeline(self._checkpoint.content, f"checkpoint {self._ckpt_path}")
        if pipeline is not None and isinstance(self.datamodule, AudioDataModule):
            self.datamodule.use_pipeline(pipeline)

    def predict(self, **kwargs: Any) -> Any:
        """``Trainer.predict`` that writes ``<run dir>/predictions.npz`` by default.

        Without a prediction writer among the callbacks an :class:`EmbeddingWriter` is added;
        predictions are not also kept in memory unless ``--return_predictions true``.
        """
        if not any(isinstance(c, BasePredictionWriter) for c in self.trainer.callbacks):
            # The data's names of the predicted split: held-out classes are not the model's.
            data = self.datamodule
            names = (
                data.split_class_names(data.predict_split) if isinstance(data, DataSplits) else None
            )
            self.trainer.callbacks.append(EmbeddingWriter(class_names=names))
        if kwargs.get("return_predictions") is None:
            kwargs["return_predictions"] = False
        return self.trainer.predict(**kwargs)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """LightningCLI's Trainer with the run's logger and checkpoint callbacks (see the class).

        Its checkpoints are saved atomically and loaded safely by
        :class:`~add_lightning.checkpoint.SafeCheckpointIO`, which restores ``--ckpt_path`` from
        the command's read of it, unless a CheckpointIO plugin is given in ``trainer.plugins``.
        """
        section = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_config = {**section.get("trainer", {}), **kwargs}
        overrides = dict(kwargs)
        if trainer_config.get("logger") in (None, True):
            root = trainer_config.get("default_root_dir")
            # default_hp_metric=False: no `hp_metric = -1` placeholder as the first card
            if root is not None:
                # name="" and version="": log_dir == root, checkpoints in root/checkpoints
                overrides["logger"] = TensorBoardLogger(
                    save_dir=root, name="", version="", default_hp_metric=False
                )
            else:
                overrides["logger"] = TensorBoardLogger(
                    os.getcwd(), name="lightning_logs", default_hp_metric=False
                )
        callback_keys = list(_CHECKPOINT_KEYS)
        if trainer_config.get("enable_checkpointing") is False:
            # `--trainer.enable_checkpointing false` means no checkpoint callback at all
            callback_keys = [
                key for key in callback_keys if key not in ("checkpoint", "last_checkpoint")
            ]
        validation_is_test = isinstance(self.datamodule, DataSplits) and (
            self.datamodule.validation_is_test
        )
        if validation_is_test and "checkpoint" in callback_keys:
            # best.ckpt chosen by val/acc on the test clips would be model selection on test data
            callback_keys = [key for key in callback_keys if key != "checkpoint"]
            if self.subcommand == "fit":
                rank_zero_info(
                    "No best.ckpt: validation uses the test fold, so a checkpoint chosen by "
                    "val/acc would be chosen on the test data (last.ckpt is the final model). "
                    "Set --data.init_args.val_fraction 0.1 to validate on part of the training "
                    "folds and get best.ckpt."
                )
        given = trainer_config.get("callbacks") or []
        callbacks = [*(given if isinstance(given, list) else [given])]
        callbacks += [section[key] for key in callback_keys]
        callbacks.append(ClassPairHeatmaps())  # the test's heat maps in TensorBoard
        callbacks.append(InputPipelineCheckpoint())  # the data's input pipeline in checkpoints
        if not is_terminal(sys.stderr) and not trainer_config.get("enable_progress_bar"):
            # Written to a file, a progress bar keeps only its last state: print one line per
            # epoch (with its time) instead. An explicit `enable_progress_bar true` keeps it.
            overrides["enable_progress_bar"] = False
            callbacks.append(EpochSummary())
        overrides["callbacks"] = callbacks
        given = trainer_config.get("plugins")
        plugins = [*(given if isinstance(given, list) else [] if given is None else [given])]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            # atomic saves and safe loads of checkpoints (a CheckpointIO of the user's is kept)
            overrides["plugins"] = [*plugins, SafeCheckpointIO(self._checkpoint)]
        if self.subcommand == "fit" and _unbounded(trainer_config):
            rank_zero_warn(
                "No `trainer.max_epochs` (nor max_steps or max_time) is set, so Lightning trains "
                "for 1000 epochs. Set `--trainer.max_epochs N`, or compose a file of "
                "configs/experiments/ that sets it."
            )
        return super().instantiate_trainer(**overrides)


def run_lightning_cli(argv: Sequence[str]) -> int:
    """Runs ``add-lightning fit|validate|test|predict ARGS`` (``argv`` includes the subcommand)."""
    log_to_console()
    AddLightningCLI(args=list(argv))
    return 0
