"""Checkpoint files: read as data (never executed), once per command, and replaced whole.

A checkpoint is a zip archive holding a pickle, and unpickling can run any code that the file
names. Every checkpoint the package reads is read by :func:`load_checkpoint`, which loads
with ``torch.load(weights_only=True)``: tensors, containers and plain values are rebuilt, any
other object refuses the file. Lightning's checkpoints of this package need nothing more (the
model's weights, optimizer and scheduler states, loop and callback states including the random
states of :class:`~add_lightning.experiments.unit.RNGStateCheckpoint`, the hyperparameters as
parsed config values, the data module's input pipeline), so no global is allow-listed. A new
piece of state that needs one would be allow-listed here by name, with
``torch.serialization.safe_globals``, and nothing wider.

Each way a file can fail to be a checkpoint gives one :class:`CheckpointError` (a ValueError)
naming the file and what was expected. :class:`SafeCheckpointIO`, installed in every Trainer of
the CLI, makes Lightning's own loads (``fit``/``test --ckpt_path``) use the same function, and
writes each checkpoint to a temporary file beside it that replaces it only once complete.

One read per command: ``add-lightning fit|validate|test|predict --ckpt_path`` reads the file
when it parses its arguments (:func:`read_checkpoint`, the tensors memory-mapped); the model's
hyperparameters, the data's input pipeline and the Trainer's restore all take that
:class:`CheckpointRead`, which :class:`SafeCheckpointIO` hands to the restore unless the file has
changed since. ``classify`` and ``export`` build the model from their one read as well
(:func:`~add_lightning.inference.load_trained_model`).
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins import TorchCheckpointIO

from add_lightning.atomic import atomic_path, remove_stale_temporary_files
from add_lightning.data.datamodule import AudioDataModule
from add_lightning.data.pipeline import InputPipeline

__all__ = [
    "LIGHTNING_KEYS",
    "PIPELINE_KEY",
    "RESUME_KEYS",
    "CheckpointError",
    "CheckpointRead",
    "DamagedCheckpointError",
    "InputPipelineCheckpoint",
    "SafeCheckpointIO",
    "UnsafeCheckpointError",
    "hand_over",
    "load_checkpoint",
    "read_checkpoint",
    "stored_pipeline",
]

#: What every Lightning checkpoint holds (``Trainer.save_checkpoint``).
LIGHTNING_KEYS = ("state_dict", "pytorch-lightning_version")
#: What ``fit`` needs besides to resume training (absent under ``save_weights_only``).
RESUME_KEYS = ("loops", "optimizer_states")
#: Where a checkpoint holds the input pipeline of its model (``InputPipeline.to_state()``).
PIPELINE_KEY = "input_pipeline"

_EXPECTED = "expected a checkpoint written by `add-lightning fit`"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names it and says what was expected."""


class DamagedCheckpointError(CheckpointError):
    """A file that cannot be read as a PyTorch checkpoint: empty, cut short, or another format."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that names objects other than tensors and plain values: not loaded."""


def _label(path: Path, argument: str | None) -> str:
    return f"Checkpoint {path}" + (f" (`{argument}`)" if argument else "")


def _read(path: Path, label: str, map_location: Any, mmap: bool) -> Any:
    """``torch.load(path, weights_only=True)`` with each failure as one CheckpointError."""
    if path.stat().st_size == 0:
        raise DamagedCheckpointError(
            f"{label} is empty (0 bytes), e.g. left by an interrupted save; {_EXPECTED}."
        )
    if not zipfile.is_zipfile(path):
        raise DamagedCheckpointError(
            f"{label} is not a PyTorch checkpoint (torch.save writes a zip archive): the file is "
            f"damaged or of another format; {_EXPECTED}."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise DamagedCheckpointError(
            f"{label} is a damaged zip archive ({error}); {_EXPECTED}."
        ) from None
    if not any(name.endswith("/data.pkl") for name in names):
        raise DamagedCheckpointError(
            f"{label} is a zip archive but not a PyTorch checkpoint (it holds no data.pkl); "
            f"{_EXPECTED}."
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise UnsafeCheckpointError(
                f"{label} holds objects that are not loaded for safety ({', '.join(unsafe)}): "
                "a checkpoint is data and loads with weights_only=True, and one written by "
                "`add-lightning fit` holds only tensors and plain values."
            ) from None
        reason = "its pickled data cannot be read"
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    raise DamagedCheckpointError(f"{label} is damaged ({reason}); {_EXPECTED}.") from None


def _unsafe_globals(path: Path) -> list[str]:
    """The names of the objects beyond weights_only's that the file's pickle refers to.

    Read statically by torch: nothing in the file is run. Empty when the pickle is damaged.
    """
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError):
        return []


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: Any = "cpu",
    *,
    mmap: bool = False,
    resume: bool = False,
    argument: str | None = None,
) -> dict[str, Any]:
    """Reads a Lightning checkpoint as data and checks that it is one.

    Args:
        path: The ``.ckpt`` file.
        map_location: ``torch.load``'s; the CPU by default.
        mmap: Map the tensors' bytes instead of reading them (``torch.load(mmap=True)``): for
            callers that need only the small entries (hyperparameters, input pipeline).
        resume: Require what ``fit`` resumes from as well (:data:`RESUME_KEYS`).
        argument: The argument that named the file (``--ckpt_path``), for the messages.

    Returns:
        The checkpoint: a dict with at least :data:`LIGHTNING_KEYS` (and :data:`RESUME_KEYS`
        with ``resume``).

    Raises:
        FileNotFoundError: If the file does not exist.
        DamagedCheckpointError: If it is empty, not a PyTorch checkpoint, or damaged.
        UnsafeCheckpointError: If it holds objects that are not loaded for safety.
        CheckpointError: If it holds something other than a Lightning checkpoint (a bare
            tensor, a dict of weights alone), or, with ``resume``, no training state.
    """
    path = Path(path)
    label = _label(path, argument)
    if not path.exists():
        raise FileNotFoundError(f"{label} does not exist.")
    if not path.is_file():
        raise CheckpointError(f"{label} is a folder, not a file; {_EXPECTED}.")
    checkpoint = _read(path, label, map_location, mmap)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{label} holds a {type(checkpoint).__name__}, not a Lightning checkpoint (a dict "
            f"with {', '.join(f'`{key}`' for key in LIGHTNING_KEYS)}); {_EXPECTED}."
        )
    missing = [key for key in LIGHTNING_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{label} is not a Lightning checkpoint: a dict without "
            f"{', '.join(f'`{key}`' for key in missing)}; {_EXPECTED}."
        )
    if not isinstance(checkpoint["state_dict"], Mapping):
        raise CheckpointError(
            f"{label} is not a Lightning checkpoint: its `state_dict` is a "
            f"{type(checkpoint['state_dict']).__name__}, not a dict of weights; {_EXPECTED}."
        )
    missing = [key for key in RESUME_KEYS if key not in checkpoint] if resume else []
    if missing:
        raise CheckpointError(
            f"{label} holds the model's weights but not the training state that `fit` resumes "
            f"({', '.join(f'`{key}`' for key in missing)}; written with `save_weights_only`?): "
            "evaluate it with `add-lightning test --ckpt_path`, or train from the start."
        )
    return checkpoint


def _file_version(path: str | os.PathLike[str]) -> tuple[int, int, int, int] | None:
    """The file's device, inode, size and modification time (ns): which file it is, and whether
    it has been written since; None if it cannot be found."""
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class CheckpointRead:
    """A checkpoint file as a command read it once: its content and which version of the file.

    Args:
        content: The checkpoint, as :func:`load_checkpoint` returns it (tensors memory-mapped).
        version: The file's device, inode, size and modification time before the read.
    """

    content: dict[str, Any]
    version: tuple[int, int, int, int] | None

    def is_read_from(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is the file that was read, unchanged since."""
        return self.version is not None and _file_version(path) == self.version


def read_checkpoint(
    path: str | os.PathLike[str], *, resume: bool = False, argument: str | None = None
) -> CheckpointRead:
    """:func:`load_checkpoint` of a command's one read of ``path``, with the file's version.

    The tensors are memory-mapped (read from the file when used, never written to it:
    copy-on-write): a reader that needs only the small entries reads nothing more, and the
    Trainer's restore (:class:`SafeCheckpointIO`) takes the same content instead of reading the
    file again. The version is taken before the read, so a file written during the read no
    longer matches it.

    Args:
        path: The ``.ckpt`` file.
        resume: Require what ``fit`` resumes from as well (:data:`RESUME_KEYS`).
        argument: The argument that named the file (``--ckpt_path``), for the messages.

    Raises:
        FileNotFoundError, CheckpointError: As :func:`load_checkpoint`.
    """
    global _handed_over
    read, _handed_over = _handed_over, None
    if read is not None and read.is_read_from(path) and (not resume or _resumable(read)):
        return read
    version = _file_version(path)
    checkpoint = load_checkpoint(path, mmap=True, resume=resume, argument=argument)
    return CheckpointRead(checkpoint, version)


# A read that a caller hands to the next read_checkpoint of the same file (hand_over)
_handed_over: CheckpointRead | None = None


def _resumable(read: CheckpointRead) -> bool:
    return all(key in read.content for key in RESUME_KEYS)


def hand_over(read: CheckpointRead) -> None:
    """Makes ``read`` the result of the next :func:`read_checkpoint` of its file, if that file
    is unchanged by then: a caller that checked the file (the experiments runner, before a
    unit resumes) passes its read on to the command it starts in this process, which then
    reads nothing. Only the next call: any other read in between forgets it."""
    global _handed_over
    _handed_over = read


def _is_local(path: str | os.PathLike[str]) -> bool:
    return "://" not in str(path)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with the package's rules for checkpoint files.

    Saves: a checkpoint is written to a temporary file in its own folder, flushed to disk, and
    replaces the previous file with one rename (:func:`~add_lightning.atomic.atomic_path`), so
    that a full disk or a kill during a save leaves the previous ``last.ckpt`` whole. Lightning's
    own save stages the file in the system's temporary folder and, when that is on another file
    system than the run, copies it over the previous checkpoint in place. The temporary files
    of saves whose process was killed are removed at the next save in the folder.

    Loads: :func:`load_checkpoint` (``weights_only=True``, one clear error per kind of bad file),
    whatever ``weights_only`` Lightning passes. Remote paths (``s3://...``) keep Lightning's
    behaviour, loading with ``weights_only=True``. The command's read of the file, given as
    ``read``, is the first load instead of a new read when it is of the same file, unchanged
    since (:meth:`CheckpointRead.is_read_from`), and loaded to the CPU as it was. Only the first:
    the restore gives its tensors to the model and optimizer, which training changes in place.

    Args:
        read: The command's read of ``--ckpt_path``, or None.
    """

    def __init__(self, read: CheckpointRead | None = None) -> None:
        super().__init__()
        self._pending_read = read

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        # Serialised in memory first, as Lightning does: torch.save into a file turns a full
        # disk into an "unexpected pos" RuntimeError, a plain write keeps ENOSPC.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        folder = Path(path).parent
        if folder.is_dir():  # a save killed midway left a temporary file of a checkpoint's size
            remove_stale_temporary_files(folder)
        try:
            with atomic_path(path) as temporary, open(temporary, "wb") as stream:
                stream.write(buffer.getbuffer())
        except OSError as error:
            raise OSError(
                error.errno,
                f"Could not save checkpoint {path} ({error.strerror or error}); the previous "
                "file there, if any, is unchanged",
            ) from error

    def load_checkpoint(
        self, path: Any, map_location: Any = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        read, self._pending_read = self._pending_read, None
        if read is not None and map_location == "cpu" and read.is_read_from(path):
            # a new top-level dict: Lightning's restore may replace entries (its migrations)
            return dict(read.content)
        return load_checkpoint(path, map_location=map_location)


def stored_pipeline(checkpoint: Mapping[str, Any], source: str) -> InputPipeline | None:
    """The input pipeline a checkpoint holds under :data:`PIPELINE_KEY`, or None.

    Args:
        checkpoint: The checkpoint, as :func:`load_checkpoint` returns it.
        source: What holds it, for error messages (e.g. ``"checkpoint <path>"``).

    Raises:
        ValueError: If the stored pipeline is damaged.
    """
    state = checkpoint.get(PIPELINE_KEY)
    return None if state is None else InputPipeline.from_state(state, source)


class InputPipelineCheckpoint(Callback):
    """Keeps the data module's input pipeline in every checkpoint, under :data:`PIPELINE_KEY`.

    On save, ``AudioDataModule.pipeline`` (the feature settings or sample rate, the training
    statistics and the class names the model is trained with) is stored; on a restore
    (``fit``/``test``/``predict`` with ``ckpt_path``) the stored pipeline replaces the data
    module's (``AudioDataModule.use_pipeline``). One fixed key rather than Lightning's place
    for a data module's state, which is named after its class: a reader of the checkpoint
    need not know which data module wrote it. The CLI adds it to every Trainer. Lightning calls
    no callback for a ``save_weights_only`` checkpoint, which then holds no pipeline.
    """

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if isinstance(trainer.datamodule, AudioDataModule):
            checkpoint[PIPELINE_KEY] = trainer.datamodule.pipeline.to_state()

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        pipeline = stored_pipeline(checkpoint, "the checkpoint")
        if pipeline is not None and isinstance(trainer.datamodule, AudioDataModule):
            trainer.datamodule.use_pipeline(pipeline)
