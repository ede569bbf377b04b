"""``add-lightning classify``: top-k labels of audio files from a checkpoint of ``fit``.

Inputs are audio files, folders (every audio file below them, sorted, hidden files skipped) and
``.csv`` files (one column of paths, relative ones read from the CSV's folder). Each file is
read as in training (channels averaged, resampled to the training rate) and scored as
:mod:`add_lightning.inference` describes: for an fbank model (AST, BEATs) it is cut into
windows of the model's input length and its probabilities are the mean of its windows'
softmax probabilities; a waveform model (a speech encoder) scores the whole file as one
window, as evaluation does. Windows of several files share a forward pass (``--batch_size``
windows at a time; waveforms zero-padded to the longest, with their padding mask).

Output: one line per file on stdout (``path<TAB>label probability<TAB>...``, top-k, in input
order); ``--output`` also writes them to ``.csv`` or ``.json``; ``--embeddings`` writes the
mean window embeddings to ``.npz``. A file that cannot be read is reported on stderr by name
and the others are still classified; the exit status is then 1.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from add_lightning.atomic import atomic_path

__all__ = ["build_parser", "expand_inputs", "main"]

_OUTPUT_FORMATS = (".csv", ".json")


def build_parser() -> ArgumentParser:
    """The parser of ``add-lightning classify``."""
    parser = ArgumentParser(
        prog="add-lightning classify",
        description=(
            "Classifies audio files (any sample rate, mono or multi-channel) with a checkpoint "
            "written by `add-lightning fit`. Fbank models (AST, BEATs): clips longer than the "
            "model's input are cut into windows of target_frames frames every --hop_frames "
            "frames (the last one ending at the clip's end) and the window probabilities "
            "averaged; shorter clips are zero-padded as in training. Waveform models (speech "
            "encoders): each clip is scored whole, as in evaluation."
        ),
        exit_on_error=False,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        type=str,
        help="audio files, folders (searched recursively) or .csv files with a column of paths",
    )
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint of `fit`")
    parser.add_argument(
        "--top_k", type=int, default=5, help="labels per file (at most the number of classes)"
    )
    parser.add_argument(
        "--output", type=str | None, default=None, help="also write the results to .csv or .json"
    )
    parser.add_argument(
        "--embeddings", type=str | None, default=None, help="write mean embeddings to this .npz"
    )
    parser.add_argument(
        "--hop_frames",
        type=int | None,
        default=None,
        help=(
            "frames between window starts of long clips (default target_frames // 2); fbank "
            "models only"
        ),
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=32,
        help="windows per forward pass (a waveform model: files)",
    )
    parser.add_argument("--num_workers", type=int, default=0, help="processes decoding audio")
    parser.add_argument("--device", type=str, default="cpu", help="e.g. cpu, cuda, cuda:1")
    parser.add_argument(
        "--csv_column",
        type=str | None,
        default=None,
        help="column of paths in .csv inputs (default: `path`, `filename` or the only column)",
    )
    parser.add_argument(
        "--progress",
        type=bool | None,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal and there are 2+ files)",
    )
    return parser


def _check_arguments(args: Any) -> None:
    for name, value, lowest in (
        ("--top_k", args.top_k, 1),
        ("--batch_size", args.batch_size, 1),
        ("--num_workers", args.num_workers, 0),
        ("--hop_frames", 1 if args.hop_frames is None else args.hop_frames, 1),
    ):
        if value < lowest:
            raise ValueError(f"Expected `{name}` to be an integer >= {lowest} but got {value}.")
    if args.output is not None and Path(args.output).suffix.lower() not in _OUTPUT_FORMATS:
        raise ValueError(f"Expected `--output` to end with .csv or .json but got {args.output!r}.")
    if args.embeddings is not None and not args.embeddings.endswith(".npz"):
        raise ValueError(f"Expected `--embeddings` to end with .npz but got {args.embeddings!r}.")


def _csv_paths(path: Path, column: str | None) -> list[Path]:
    """The paths in one column of a CSV with a header row (relative ones: from its folder)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            header = [] if not rows else list(rows[0])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"Could not read the CSV input {path}: {error}") from error
    if not rows:
        raise ValueError(f"The CSV input {path} has no rows (expected a header and paths).")
    if column is None:
        candidates = [name for name in ("path", "filename") if name in header]
        column = candidates[0] if candidates else header[0] if len(header) == 1 else None
        if column is None:
            raise ValueError(
                f"The CSV input {path} has the columns {header} but no `path` or `filename` "
                "column; name the column of paths with --csv_column."
            )
    elif column not in header:
        raise ValueError(
            f"The CSV input {path} has no column {column!r} (`--csv_column`); its columns are "
            f"{header}."
        )
    paths = []
    for line, row in enumerate(rows, start=2):
        value = (row.get(column) or "").strip()
        if not value:
            raise ValueError(f"The CSV input {path}, line {line}: the {column!r} cell is empty.")
        paths.append(path.parent / Path(value).expanduser())
    return paths


def expand_inputs(inputs: Sequence[str], csv_column: str | None = None) -> list[Path]:
    """The audio files of the inputs, in order: files as given, folders, CSV columns.

    A folder gives every file below it whose suffix is in ``AUDIO_EXTENSIONS`` (any case),
    sorted by path, skipping hidden files and folders. A path that does not exist is kept, to
    be reported as unreadable with the others.

    Raises:
        ValueError: If a folder holds no audio file or a CSV input is unusable.
    """
    from add_lightning.data.datasets.folder import AUDIO_EXTENSIONS

    paths: list[Path] = []
    for text in inputs:
        item = Path(text).expanduser()
        if item.is_dir():
            found = sorted(
                path
                for path in item.rglob("*")
                if path.suffix.lower() in AUDIO_EXTENSIONS
                and path.is_file()
                and not any(part.startswith(".") for part in path.relative_to(item).parts)
            )
            if not found:
                raise ValueError(
                    f"The folder {item} holds no audio file (expected "
                    f"{', '.join(AUDIO_EXTENSIONS)})."
                )
            paths.extend(found)
        elif item.suffix.lower() == ".csv" and item.is_file():
            paths.extend(_csv_paths(item, csv_column))
        else:
            paths.append(item)
    return paths


class _FileWindows:
    """Map-style dataset: item i = ``(i, (windows, valid lengths) or None, error or None)``.

    The windows are the model's inputs from ``pipeline.inputs`` (see
    :attr:`~add_lightning.inference.TrainedModel.pipeline`). Errors are returned, not raised, so
    that one unreadable file (in a DataLoader worker too) does not stop the others.
    """

    def __init__(self, paths: Sequence[Path], pipeline: Any, hop_frames: int | None) -> None:
        self.paths = list(paths)
        self.pipeline = pipeline
        self.hop_frames = hop_frames

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        from add_lightning.data.audio import AudioError, load_audio

        path = self.paths[index]
        rate = self.pipeline.sample_rate
        try:
            windows = self.pipeline.inputs(load_audio(path, rate), rate, self.hop_frames)
        except AudioError as error:
            return index, None, str(error)
        except (ValueError, OSError) as error:
            return index, None, f"Audio file {path}: {error}"
        return index, windows, None  # (windows, valid frames or samples of each window)


def _write_atomic(path: Path, write: Any) -> None:
    """``write(handle)`` into a temporary file beside ``path``, then renames it into place."""
    with (
        atomic_path(path) as temporary,
        temporary.open("w", newline="", encoding="utf-8") as handle,
    ):
        write(handle)


def _write_results(path: Path, rows: list[dict[str, Any]], top_k: int, meta: dict) -> None:
    if path.suffix.lower() == ".json":
        _write_atomic(path, lambda handle: json.dump({**meta, "clips": rows}, handle, indent=2))
        return
    fields = ["path", "num_windows"]
    for rank in range(1, top_k + 1):
        fields += [f"label_{rank}", f"probability_{rank}"]
    fields.append("error")

    def write(handle: Any) -> None:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            flat = {"path": row["path"], "num_windows": row["num_windows"], "error": row["error"]}
            for rank, entry in enumerate(row["top_k"], start=1):
                flat[f"label_{rank}"] = entry["label"]
                flat[f"probability_{rank}"] = entry["probability"]
            writer.writerow(flat)

    _write_atomic(path, write)


def main(argv: Sequence[str]) -> int:
    """Runs ``add-lightning classify ARGS`` (``argv`` includes ``classify``); exit status.

    Returns:
        0 when every file was classified, 1 when some could not be read (each named on
        stderr; the others are classified and written).

    Raises:
        ValueError: On invalid arguments, an unusable checkpoint or no input file at all.
    """
    import argparse

    parser = build_parser()
    try:
        args = parser.parse_args(list(argv[1:]))
    except argparse.ArgumentError as error:
        raise ValueError(f"classify: {error} (see `add-lightning classify --help`)") from None
    _check_arguments(args)
    paths = expand_inputs(args.inputs, args.csv_column)

    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from add_lightning.inference import concat_inputs, load_trained_model
    from add_lightning.models.prediction import save_npz_atomic

    trained = load_trained_model(args.ckpt_path, map_location=args.device)
    if trained.waveform is not None and args.hop_frames is not None:
        raise ValueError(
            f"`--hop_frames` applies to fbank models, but {args.ckpt_path} is a waveform model "
            "(a speech encoder), which scores each file whole; leave `--hop_frames` out."
        )
    trained.model.to(args.device)
    top_k = min(args.top_k, len(trained.class_names))
    loader = DataLoader(
        _FileWindows(paths, trained.pipeline, args.hop_frames),
        batch_size=None,
        num_workers=args.num_workers,
    )
    show = args.progress if args.progress is not None else len(paths) > 1 and sys.stderr.isatty()
    bar = tqdm(loader, total=len(paths), desc="classify", unit="file", disable=not show)

    rows: list[dict[str, Any] | None] = [None] * len(paths)
    embeddings: dict[int, Any] = {}
    probabilities: dict[int, Any] = {}
    pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        window_probabilities, window_embeddings = trained.score_windows(
            concat_inputs([windows for _, windows, _ in pending]),
            args.batch_size,
            torch.cat([num_frames for _, _, num_frames in pending]),
        )
        offset = 0
        for index, windows, _ in pending:
            count = windows.shape[0]
            mean = window_probabilities[offset : offset + count].mean(dim=0)
            embeddings[index] = window_embeddings[offset : offset + count].mean(dim=0)
            probabilities[index] = mean
            offset += count
            best = mean.topk(top_k)
            entries = [
                {"label": trained.class_names[int(i)], "probability": float(p)}
                for p, i in zip(best.values, best.indices)
            ]
            rows[index] = {
                "path": str(paths[index]),
                "num_windows": count,
                "top_k": entries,
                "probabilities": dict(zip(trained.class_names, map(float, mean))),
                "error": None,
            }
            line = "\t".join(f"{e['label']} {e['probability']:.4f}" for e in entries)
            bar.write(f"{paths[index]}\t{line}", file=sys.stdout)
        pending.clear()

    failures = 0
    for index, item, error in bar:
        if error is not None:
            failures += 1
            flush()  # keep stdout in input order
            rows[index] = {
                "path": str(paths[index]),
                "num_windows": 0,
                "top_k": [],
                "probabilities": None,
                "error": error,
            }
            sys.stdout.flush()  # the results so far before the message, in a shared log
            bar.write(f"add-lightning classify: skipped: {error}", file=sys.stderr)
            continue
        pending.append((index, *item))
        if sum(w.shape[0] for _, w, _ in pending) >= args.batch_size:
            flush()
    flush()
    bar.close()

    done = [row for row in rows if row is not None]
    if args.output is not None:
        meta = {"checkpoint": str(args.ckpt_path), "class_names": trained.class_names}
        _write_results(Path(args.output), done, top_k, meta)
    if args.embeddings is not None and embeddings:
        order = sorted(embeddings)
        save_npz_atomic(
            args.embeddings,
            paths=np.array([str(paths[i]) for i in order]),
            embeddings=torch.stack([embeddings[i] for i in order]).numpy(),
            probabilities=torch.stack([probabilities[i] for i in order]).numpy(),
            class_names=np.array(trained.class_names),
        )
    written = [name for name in (args.output, args.embeddings if embeddings else None) if name]
    summary = f"classified {len(paths) - failures} of {len(paths)} files"
    if failures:
        summary += f"; {failures} could not be read (named above)"
    if written:
        summary += f"; wrote {', '.join(written)}"
    sys.stdout.flush()
    sys.stderr.write(f"add-lightning classify: {summary}.\n")
    return 1 if failures else 0
