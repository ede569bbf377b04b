"""What the package does around jsonargparse (4.53) and Lightning (2.6), one piece each.

Each piece names the upstream behaviour it works around or predicts, and when to delete it.
:mod:`add_lightning.lightning_cli` uses them, and :mod:`add_lightning.inference`
:func:`module_from_checkpoint`. The one-line message for an unknown config key, which reads
jsonargparse's message text, is :mod:`add_lightning.config_errors`.
"""

from __future__ import annotations

import copy
import inspect
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from jsonargparse import Namespace
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, instantiate_module
from lightning.pytorch.utilities import rank_zero_warn

from add_lightning.checkpoint import CheckpointError
from add_lightning.config_errors import unknown_key_message
from add_lightning.exit_statuses import TRACEBACK_VARIABLE, USAGE_STATUS
from add_lightning.models.checkpoint_hooks import BACKBONE_SOURCE_KEY

__all__ = [
    "ShortErrorParser",
    "constructor_error",
    "merge_checkpoint_hyperparameters",
    "module_from_checkpoint",
    "nested_nulls_as_objects",
    "predicted_last_checkpoint",
    "restore_ckpt_path",
    "warn_about_replaced_model_arguments",
]


class ShortErrorParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one line, without the command's usage.

    Upstream: jsonargparse's ``error`` prints the usage of the whole command (about 80 lines
    for ``fit``) before the message, and an unknown key inside a class's ``init_args`` as a dump
    of every member of a Union. Here an error is ``add-lightning: error: <message>`` and a line
    of help, an unknown key one line naming the key, the ``--config`` file holding it and the
    closest accepted key (:func:`~add_lightning.config_errors.unknown_key_message`);
    ``ADD_LIGHTNING_TRACEBACK=1`` shows jsonargparse's own output.

    Delete when jsonargparse can leave the usage out of its errors and names the file and the
    closest key of an unknown one (then ``config_errors`` goes too).
    """

    _given_args: Sequence[str] = ()

    def parse_args(self, args: Sequence[str] | None = None, *more: Any, **kwargs: Any) -> Any:
        # kept for `error`, which names the --config file that holds an unknown key
        self._given_args = list(sys.argv[1:] if args is None else args)
        return super().parse_args(args, *more, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            super().error(message, ex)  # raised for callers, or the usage and full message
        parser = getattr(ex, "subcommand_parser", None) or self
        short = unknown_key_message(
            message, self._given_args, lambda: list(parser.get_defaults().keys())
        )
        # a subcommand's parser is named "<program> [options] fit"; the parser without
        # subcommands (`run=False`, as `cv` composes its configs) takes fit's arguments
        subcommand = parser.prog.split()[-1:] if "[options]" in parser.prog else ["fit"]
        command = " ".join(["add-lightning", *subcommand, "--help"])
        sys.stderr.write(
            f"add-lightning: error: {short or message}\n(`{command}` describes the accepted "
            f"keys; set {TRACEBACK_VARIABLE}=1 for the full message)\n"
        )
        self.exit(USAGE_STATUS)


def constructor_error(error: ValueError) -> BaseException:
    """The error of the constructor that jsonargparse's ``error`` wraps, else ``error`` itself.

    Upstream: jsonargparse reports a value that fits no member of a Union (a class argument
    that may be None, e.g. ``data``) with a plain ValueError "Does not validate against any of
    the Union subtypes" that lists each member's error as a line ``  - <message>``, raised from
    the error of the constructor it called (a missing data set, an offline hub id); the
    constructor's own error says what to do.

    Delete when jsonargparse raises (or shows first) the constructor's error for a Union.
    """
    root: BaseException = error
    while root.__cause__ is not None and _wraps_its_cause(root):
        root = root.__cause__
    return root


def _wraps_its_cause(error: BaseException) -> bool:
    cause = error.__cause__
    if type(error) is not ValueError or cause is None:
        return False
    first_line = (str(cause).splitlines() or [""])[0]
    return f"  - {first_line}" in str(error)


_NULLS = ("null", "None", "~")
_NESTED = ".init_args."


def nested_nulls_as_objects(argv: Sequence[str]) -> list[str]:
    """``--A.init_args.B.init_args.C null`` as ``--A.init_args.B={init_args: {C: null}}``.

    Upstream: jsonargparse turns a ``null`` given on the command line for an argument of a
    class inside another class's ``init_args`` into the string ``"None"``: an ``int | None``
    argument is then refused, and a ``str | None`` one (AST's ``pretrained``) silently becomes
    "None". The same value given as an object one level up is parsed as YAML and merged with
    the values given before, so nothing else changes. Other arguments are returned as they are.

    Delete when ``--model.init_args.backbone.init_args.pretrained null`` parses as None without
    it (``tests/test_first_hour.py``, "null from the command line reaches nested classes").
    """
    rewritten: list[str] = []
    index = 0
    while index < len(argv):
        argument = argv[index]
        key, value, width = argument, None, 1
        if argument.startswith("--") and "=" in argument:
            key, value = argument.split("=", 1)
        elif argument.startswith("--") and index + 1 < len(argv):
            value, width = argv[index + 1], 2
        if value in _NULLS and key.count(_NESTED) >= 2:
            owner, _, leaf = key.rpartition(_NESTED)
            nested = "null"
            for part in reversed(leaf.split(".")):
                nested = f"{{{part}: {nested}}}"
            rewritten.append(f"{owner}={{init_args: {nested}}}")
            index += width
            continue
        rewritten.append(argument)
        index += 1
    return rewritten


def predicted_last_checkpoint(section: Namespace) -> Path | None:
    """The file that ``--ckpt_path last`` finds: ``last.ckpt`` of the ``last_checkpoint`` callback.

    Upstream (predicted): the Trainer resolves ``ckpt_path="last"`` only when ``fit`` starts,
    after LightningCLI has built the model from the config; a file path is read by LightningCLI
    first and the model rebuilt from its hyperparameters, without loading pretrained weights.
    Resolving ``last`` here, where the run's callbacks and logger put it, makes both the same.

    Its folder is ``last_checkpoint.dirpath`` or, with the run's own TensorBoard logger,
    ``<default_root_dir>/checkpoints``; None where only the Trainer can tell (another logger,
    or no ``default_root_dir``: a new ``lightning_logs/version_N``).

    Delete when LightningCLI resolves ``--ckpt_path last`` before it instantiates the model.
    """
    callback = section.get("last_checkpoint")
    if callback is None:
        return None
    name = callback.get("filename") or ModelCheckpoint.CHECKPOINT_NAME_LAST
    filename = name + ModelCheckpoint.FILE_EXTENSION
    if callback.get("dirpath") is not None:
        return Path(str(callback.get("dirpath"))) / filename
    root = section.get("trainer.default_root_dir")
    if root is None or section.get("trainer.logger") not in (None, True):
        return None
    return Path(str(root)) / "checkpoints" / filename


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": leaf}``; lists and tuples compare as lists."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flat(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: list(value) if isinstance(value, tuple) else value}


def warn_about_replaced_model_arguments(section: Namespace, checkpoint: dict[str, Any]) -> None:
    """Warns when ``--ckpt_path``'s stored hyperparameters will replace given model arguments.

    Upstream (predicted): LightningCLI (``_parse_ckpt_path``, done here by
    :func:`merge_checkpoint_hyperparameters`) rebuilds the model from the checkpoint's
    hyperparameters (the weights fit only that architecture) and silently drops a
    ``--model.*`` value that differs; this says which.

    Delete when LightningCLI warns about (or refuses) model arguments that the checkpoint's
    hyperparameters override.
    """
    path, model = section.get("ckpt_path"), section.get("model")
    if model is None:
        return
    stored = checkpoint.get("hyper_parameters", {})
    # A self-contained checkpoint stores the backbone as its architecture (pretrained: null,
    # see AudioClassifier.on_save_checkpoint) and the backbone as given for training beside it:
    # a given value equal to either is what the model was trained with, not a replaced one.
    source = checkpoint.get(BACKBONE_SOURCE_KEY)
    trained_with = {**stored, "backbone": source} if source is not None else stored
    given = model.as_dict() if isinstance(model, Namespace) else dict(model)
    stored_flat = _flat({key: v for key, v in stored.items() if not key.startswith("_")})
    source_flat = _flat({key: v for key, v in trained_with.items() if not key.startswith("_")})
    given_flat = _flat(given.get("init_args") or {})
    replaced = {
        key: (given_flat[key], stored_flat[key])
        for key in sorted(set(given_flat) & set(stored_flat))
        if given_flat[key] is not None
        and given_flat[key] != stored_flat[key]
        and given_flat[key] != source_flat.get(key, stored_flat[key])
    }
    if replaced:
        rank_zero_warn(
            f"The model is rebuilt from the hyperparameters stored in {path}, so these given "
            "model arguments are replaced by the checkpoint's: "
            + ", ".join(f"{key} {new!r} (given {old!r})" for key, (old, new) in replaced.items())
            + ". To change the architecture, train a new model."
        )


def merge_checkpoint_hyperparameters(
    parser: LightningArgumentParser, config: Namespace, checkpoint: Mapping[str, Any]
) -> Namespace:
    """``config`` with the model's hyperparameters stored in ``--ckpt_path``, from the command's
    read of it, and without ``ckpt_path`` until :func:`restore_ckpt_path` puts it back.

    Upstream: LightningCLI's ``__init__`` calls, after ``parse_arguments`` and before
    ``before_instantiate_classes``, a private step (``_parse_ckpt_path``) that reads
    ``--ckpt_path`` with ``torch.load`` (the whole file) when it names a file, to merge the stored
    hyperparameters into the config as the model's arguments (the weights fit only that
    architecture). ``parse_arguments`` has read the file already
    (:func:`~add_lightning.checkpoint.read_checkpoint`): the same merge is done here from that
    read, and the path is out of the config while that step looks for it.

    Delete (and restore_ckpt_path) when LightningCLI no longer reads ``--ckpt_path`` there or
    takes the hyperparameters from a public hook (``tests/test_workarounds.py``: "LightningCLI
    reads --ckpt_path between parse_arguments and before_instantiate_classes").
    """
    subcommand = config.get("subcommand")
    # LightningCLI's merge; a copy: the parser may change what it is given, and the restore
    # reads the checkpoint's hyperparameters (on_load_checkpoint)
    hparams = copy.deepcopy(dict(checkpoint.get("hyper_parameters") or {}))
    hparams.pop("_instantiator", None)
    if hparams:
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            config = parser.parse_object({subcommand: {"model": hparams}}, config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise
    config[subcommand]["ckpt_path"] = None
    return config


def restore_ckpt_path(config: Namespace, ckpt_path: Any) -> None:
    """Puts back the ``--ckpt_path`` that :func:`merge_checkpoint_hyperparameters` took out.

    Called in ``before_instantiate_classes``, before the config is saved or passed on.
    """
    config[config.get("subcommand")]["ckpt_path"] = ckpt_path


# `load_from_checkpoint` runs a checkpoint's `_instantiator` only if it is LightningCLI's
_CLI_INSTANTIATORS = (
    "lightning.pytorch.cli.instantiate_module",
    "pytorch_lightning.cli.instantiate_module",
)

ModuleT = TypeVar("ModuleT", bound=LightningModule)


def _is_imported_subclass(class_path: Any, cls: type) -> bool:
    """Whether ``class_path`` names ``cls`` or a subclass of it, already imported (no import)."""
    if not isinstance(class_path, str):
        return False
    module, _, name = class_path.rpartition(".")
    target = getattr(sys.modules.get(module), name, None)
    return isinstance(target, type) and issubclass(target, cls)


def module_from_checkpoint(
    cls: type[ModuleT], checkpoint: Mapping[str, Any], source: str
) -> ModuleT:
    """``cls.load_from_checkpoint(path)`` of a checkpoint already read, on the CPU.

    Upstream: ``LightningModule.load_from_checkpoint`` takes a file (or file object) and reads
    it with ``torch.load``; a caller that has read the checkpoint (to check it and take its
    input pipeline) would read it twice. This does what it does (Lightning 2.6) from the read:
    the module is built from the stored hyperparameters, the arguments that ``cls.__init__``
    takes: through LightningCLI's ``instantiate_module`` where they were saved under
    LightningCLI (``_instantiator``), else as keyword arguments; then ``configure_model``,
    ``on_load_checkpoint(checkpoint)``, and the weights loaded as strictly as the module's
    ``strict_loading`` says. A checkpoint that names another instantiator, or a stored class
    (``_class_path``) that is not ``cls`` or an imported subclass of it, is refused, as
    Lightning refuses it. Not done: Lightning's migrations of checkpoints of its versions
    before 2.0, which change only the training state (loops, callbacks).

    Delete when ``load_from_checkpoint`` or another public function of Lightning builds a
    module from a checkpoint already read (``tests/test_workarounds.py`` compares the two).

    Args:
        cls: The LightningModule class.
        checkpoint: The checkpoint (:func:`~add_lightning.checkpoint.load_checkpoint`).
        source: What holds it, for error messages (e.g. ``"Checkpoint <path>"``).

    Raises:
        CheckpointError: If it names another instantiator or class.
    """
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    instantiator = hparams.pop("_instantiator", None)
    class_path = hparams.pop("_class_path", None)
    if instantiator is not None and instantiator not in _CLI_INSTANTIATORS:
        raise CheckpointError(
            f"{source} names the instantiator {instantiator!r}, not LightningCLI's: it is not "
            "run, as a checkpoint is data."
        )
    if class_path is not None and not _is_imported_subclass(class_path, cls):
        raise CheckpointError(
            f"{source} holds a {class_path!r} model, expected a {cls.__name__} (or an imported "
            "subclass of it)."
        )
    parameters = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        hparams = {key: value for key, value in hparams.items() if key in parameters}
    module = instantiate_module(cls, hparams) if instantiator is not None else cls(**hparams)
    module.configure_model()  # a no-op unless cls builds its layers there
    checkpoint = dict(checkpoint)  # the hook may replace entries (the weights it loads next)
    module.on_load_checkpoint(checkpoint)
    keys = module.load_state_dict(checkpoint["state_dict"], strict=module.strict_loading)
    if keys.missing_keys or keys.unexpected_keys:  # only where strict_loading is False
        rank_zero_warn(
            f"{source} lacks the model's weights {keys.missing_keys} and holds weights that the "
            f"model does not have {keys.unexpected_keys}."
        )
    return module
