"""The pieces of :mod:`add_lightning.workarounds` that are checked on their own.

The others are checked through the commands they serve: the one-line config errors in
``test_console.py``, ``--ckpt_path last`` and the replaced model arguments in ``test_cli.py``,
the one read of a checkpoint in ``test_checkpoint_reads.py``. The checks of a workaround
against upstream fail when upstream changes: then the workaround can go.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningCLI

from add_lightning.checkpoint import CheckpointError
from add_lightning.workarounds import (
    constructor_error,
    merge_checkpoint_hyperparameters,
    module_from_checkpoint,
    nested_nulls_as_objects,
    restore_ckpt_path,
)

_MESSAGE = "Expected argument `size` to be 2 but got 1."


class _Refusing:
    """A class whose constructor refuses its argument, as a data set refuses a missing root."""

    def __init__(self, size: int = 1) -> None:
        raise ValueError(_MESSAGE)


def test_null_for_an_argument_of_a_nested_class_is_none():
    argv = ["fit", "--data.init_args.fold", "null", "--a.init_args.b.init_args.c", "null"]
    argv += ["--a.init_args.b.init_args.d.e=~", "--a.init_args.b.init_args.f", "1"]
    assert nested_nulls_as_objects(argv) == [
        "fit",
        "--data.init_args.fold",  # one level: jsonargparse parses it right
        "null",
        "--a.init_args.b={init_args: {c: null}}",
        "--a.init_args.b={init_args: {d: {e: null}}}",
        "--a.init_args.b.init_args.f",
        "1",
    ]


def test_constructor_error_unwraps_jsonargparse_union_error():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--part", type=_Refusing | None)
    config = parser.parse_args(["--part", f"{__name__}._Refusing"])
    with pytest.raises(ValueError) as caught:
        parser.instantiate_classes(config)
    # jsonargparse's Union message, which lists it (if this fails, delete constructor_error)
    assert str(caught.value) != _MESSAGE
    assert str(constructor_error(caught.value)) == _MESSAGE
    plain = ValueError("not a wrapper")
    assert constructor_error(plain) is plain


class Tiny(LightningModule):
    """A module with hyperparameters, which records the checkpoint it is given."""

    def __init__(self, width: int = 2, name: str = "given") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(width, 1)
        self.loaded_step: int | None = None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.loaded_step = checkpoint["global_step"]


class _Stopped(Exception):
    """Raised where the recording CLI has seen what it needs, before anything runs."""


class _RecordingCLI(LightningCLI):
    """LightningCLI (not the package's) that records its steps and torch.load's reads."""

    events: list[str]

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        self.events.append("parse_arguments")
        self.parsed = self.config.clone()

    def before_instantiate_classes(self) -> None:
        self.events.append("before_instantiate_classes")
        raise _Stopped(self)


def _checkpoint(path: Path, hyper_parameters: dict, **more: object) -> dict:
    content = {
        "state_dict": Tiny(width=3).state_dict(),
        "pytorch-lightning_version": "2.6.0",
        "global_step": 7,
        "hyper_parameters": hyper_parameters,
        **more,
    }
    torch.save(content, path)
    return content


@pytest.mark.parametrize("subclass_mode", [False, True], ids=["class", "subclass-mode"])
def test_lightning_cli_reads_ckpt_path_between_parse_arguments_and_before_instantiate_classes(
    tmp_path, monkeypatch, subclass_mode
):
    # What merge_checkpoint_hyperparameters and restore_ckpt_path rely on and do instead. If
    # this fails, LightningCLI has changed: delete them (or move them to the new place).
    stored = {"width": 3, "name": "stored"}
    if subclass_mode:  # as LightningCLI saves them under subclass_mode_model
        stored = {"_class_path": f"{__name__}.Tiny", **stored}
    path = tmp_path / "tiny.ckpt"
    instantiator = "lightning.pytorch.cli.instantiate_module"
    checkpoint = _checkpoint(path, {"_instantiator": instantiator, **stored})
    events: list[str] = []
    load = torch.load
    monkeypatch.setattr(_RecordingCLI, "events", events, raising=False)
    monkeypatch.setattr(sys, "argv", ["tiny"])  # args alone, as a program calls it
    monkeypatch.setattr(
        torch, "load", lambda *args, **kwargs: events.append("torch.load") or load(*args, **kwargs)
    )
    argv = ["validate", "--ckpt_path", str(path)]
    if subclass_mode:
        argv += ["--model", f"{__name__}.Tiny"]
    with pytest.raises(_Stopped) as stopped:
        _RecordingCLI(Tiny, subclass_mode_model=subclass_mode, seed_everything_default=0, args=argv)
    assert events == ["parse_arguments", "torch.load", "before_instantiate_classes"]
    cli = stopped.value.args[0]
    # the merge done from the checkpoint already read is LightningCLI's
    merged = merge_checkpoint_hyperparameters(cli.parser, cli.parsed, checkpoint)
    assert merged["validate"]["ckpt_path"] is None  # so that LightningCLI reads nothing
    restore_ckpt_path(merged, str(path))
    assert merged.as_dict() == cli.config.as_dict()
    model = cli.config["validate"]["model"]
    assert (model.init_args if subclass_mode else model).as_dict() == {"width": 3, "name": "stored"}


def _saved_under_cli(path: Path, **more: object) -> Path:
    """A checkpoint of Tiny(width=3) built by LightningCLI, which saves its `_instantiator`."""
    argv = ["--model.width", "3", "--model.name", "cli"]
    model = LightningCLI(Tiny, seed_everything_default=0, args=argv, run=False).model
    assert "_instantiator" in model.hparams
    _checkpoint(path, dict(model.hparams), **more)
    return path


def test_module_from_checkpoint_is_load_from_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["tiny"])
    path = _saved_under_cli(tmp_path / "tiny.ckpt")
    expected = Tiny.load_from_checkpoint(path, weights_only=True)
    built = module_from_checkpoint(Tiny, torch.load(path, weights_only=True), "Checkpoint x")
    assert type(built) is Tiny
    assert dict(built.hparams) == dict(expected.hparams)
    assert built.loaded_step == expected.loaded_step == 7
    state = built.state_dict()
    assert state.keys() == expected.state_dict().keys()
    assert all(torch.equal(state[key], value) for key, value in expected.state_dict().items())
    # keyword hyperparameters (a module built in Python), as well
    plain = tmp_path / "plain.ckpt"
    _checkpoint(plain, {"width": 3, "name": "python"})
    built = module_from_checkpoint(Tiny, torch.load(plain, weights_only=True), "Checkpoint x")
    assert dict(built.hparams) == dict(Tiny.load_from_checkpoint(plain).hparams)


@pytest.mark.parametrize(
    ("entry", "value", "match"),
    [
        ("_instantiator", "os.system", "names the instantiator 'os.system'"),
        ("_class_path", "not_imported_module.Model", "holds a 'not_imported_module.Model' model"),
        ("_class_path", "torch.nn.Linear", "holds a 'torch.nn.Linear' model, expected a Tiny"),
    ],
)
def test_module_from_checkpoint_refuses_what_load_from_checkpoint_refuses(
    tmp_path, monkeypatch, entry, value, match
):
    monkeypatch.setattr(sys, "argv", ["tiny"])
    path = tmp_path / "tiny.ckpt"
    checkpoint = torch.load(_saved_under_cli(path), weights_only=True)
    checkpoint["hyper_parameters"][entry] = value
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="blocked to prevent arbitrary code execution"):
        Tiny.load_from_checkpoint(path, weights_only=True)
    with pytest.raises(CheckpointError, match=f"^Checkpoint x {match}"):
        module_from_checkpoint(Tiny, checkpoint, "Checkpoint x")
