"""``add-lightning classify``: top-k labels of audio files from a checkpoint of ``fit``.

Inputs are audio files, folders (every audio file below them, sorted, hidden files skipped) and
``.csv`` files (one column of paths, relative ones read from the CSV's folder). Each file is
read as in training (channels averaged, resampled to the training rate), turned into model
input by the checkpoint's input pipeline (:mod:`add_lightning.data.pipeline`) and scored as
:mod:`add_lightning.inference` describes: for an fbank model (AST, BEATs) it is cut into
windows of the model's input length; a waveform model (a speech encoder) scores the whole file
as one window, as evaluation does. Windows far below the file's loudest (``--silence_db``, 30
dB by default) or below -80 dBFS are silent and left out; the file's probabilities pool the
other windows' softmax probabilities (``--pooling``: ``mean``, the default, or ``max``). A
file whose every window is silent gets no label and is reported as silent. Windows of several
files share a forward pass (``--batch_size`` windows at a time; waveforms zero-padded to the
longest, with their padding mask).

Output: one line per file on stdout (``path<TAB>label probability<TAB>...``, top-k, in input
order; ``path<TAB>(silent)`` for a silent file; in the path, unprintable characters and
backslashes are escaped as Python writes them, ``\\t``, ``\\n``, ``\\\\``, so that a file name
cannot forge a line); ``--output`` also writes them to ``.csv`` or ``.json`` (paths unchanged,
with each file's status and its numbers of windows and silent windows); ``--windows`` writes
one row per window (start, end, level, silent, top-k); ``--embeddings`` writes the mean
embeddings of the non-silent windows to ``.npz``. A file that cannot be read (a dangling
symbolic link too) is reported on stderr by name and the others are still classified; the exit
status is then 1. A silent file is no error.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ArgumentParser

from add_lightning.atomic import atomic_path
from add_lightning.cli import ERROR_STATUS, USAGE_STATUS

__all__ = ["build_parser", "expand_inputs", "main"]

_OUTPUT_FORMATS = (".csv", ".json")
# inference.SILENCE_BELOW_PEAK_DB and SILENCE_FLOOR_DBFS (a test checks that they agree), not
# imported: inference loads torch and Lightning, which `--help` and a usage error need not wait for
_SILENCE_DB, _SILENCE_FLOOR_DBFS = 30.0, -80.0


def build_parser() -> ArgumentParser:
    """The parser of ``add-lightning classify``."""
    parser = ArgumentParser(
        prog="add-lightning classify",
        description=(
            "Classifies audio files (any sample rate, mono or multi-channel) with a checkpoint "
            "written by `add-lightning fit`. Fbank models (AST, BEATs): clips longer than the "
            "model's input are cut into windows of target_frames frames every --hop_frames "
            "frames (the last one ending at the clip's end); shorter clips are zero-padded as "
            "in training. Waveform models (speech encoders): each clip is scored whole, as in "
            "evaluation. Silent windows (see --silence_db) are left out and the others' "
            "probabilities pooled (--pooling); a file silent throughout gets no label."
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
        "--pooling",
        type=Literal["mean", "max"],
        default="mean",
        help=(
            "how a file's probabilities come from its non-silent windows': their mean, or max "
            "(each class's highest window probability, for a short event in a long file)"
        ),
    )
    parser.add_argument(
        "--silence_db",
        type=float | None,
        default=_SILENCE_DB,
        help=(
            "a window whose loudest frame (25 ms) is more than this many dB below the file's "
            f"loudest frame, or below {_SILENCE_FLOOR_DBFS:g} dBFS, is silent and left out of "
            "the file's scores; null keeps every window"
        ),
    )
    parser.add_argument(
        "--windows",
        type=str | None,
        default=None,
        help="write one row per window (start, end, level, silent, top-k) to .csv or .json",
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
    for name, value in (("--output", args.output), ("--windows", args.windows)):
        if value is not None and Path(value).suffix.lower() not in _OUTPUT_FORMATS:
            raise ValueError(f"Expected `{name}` to end with .csv or .json but got {value!r}.")
    if args.windows is not None and args.output is not None and args.windows == args.output:
        raise ValueError(
            f"Expected `--windows` and `--output` to be two files but both are {args.output!r}."
        )
    if args.silence_db is not None and not (
        math.isfinite(args.silence_db) and args.silence_db >= 0
    ):
        raise ValueError(
            f"Expected `--silence_db` to be a number of dB >= 0 or null but got {args.silence_db}."
        )
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
    be reported as unreadable with the others; so is an entry of a folder that is no regular
    file (a dangling symbolic link, a link loop, a pipe).

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
                and not path.is_dir()  # a dangling link is reported, not skipped
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


def _escape_controls(text: str) -> str:
    r"""``text`` (a file name, a message naming one) as one line: unprintable characters and
    backslashes escaped.

    Python's escapes (``\t``, ``\n``, ``\x1b``, ``\u2028``, ``\udcff`` for an undecodable
    byte) replace each character that ``str.isprintable`` rejects, and ``\\`` a backslash, so
    that a file name cannot add a line or a field and the escaping can be undone; ordinary
    names, spaces and non-ASCII letters included, are unchanged.
    """
    return "".join(
        char if char.isprintable() and char != "\\" else char.encode("unicode_escape").decode()
        for char in text
    )


class _FileWindows:
    """Map-style dataset: item i = ``(i, ClipWindows or None, error or None)``.

    The windows are the model's inputs, their times and levels from ``pipeline.clip_windows``
    (an :class:`~add_lightning.data.pipeline.InputPipeline`). Errors are returned, not
    raised, so that one unreadable file (in a DataLoader worker too) does not stop the others.
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
            windows = self.pipeline.clip_windows(load_audio(path, rate), rate, self.hop_frames)
        except AudioError as error:
            return index, None, str(error)
        except (ValueError, OSError) as error:
            return index, None, f"Audio file {path}: {error}"
        return index, windows, None


def _write_atomic(path: Path, write: Any) -> None:
    """``write(handle)`` into a temporary file beside ``path``, then renames it into place."""
    with (
        atomic_path(path) as temporary,
        temporary.open("w", newline="", encoding="utf-8") as handle,
    ):
        write(handle)


def _write_rows(
    path: Path,
    key: str,
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    top_k: int,
    before: list[str],
    after: Sequence[str] = (),
) -> None:
    """``rows`` to ``path``: a ``.json`` object (``meta`` and the rows under ``key``) or a
    ``.csv`` with the columns ``before``, then ``label_i, probability_i`` from each row's
    ``top_k`` list, then ``after`` (a row's other entries are JSON only)."""
    if path.suffix.lower() == ".json":
        _write_atomic(path, lambda handle: json.dump({**meta, key: rows}, handle, indent=2))
        return
    ranks = [(f"label_{rank}", f"probability_{rank}") for rank in range(1, top_k + 1)]
    fields = [*before, *(name for pair in ranks for name in pair), *after]

    def write(handle: Any) -> None:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            flat = dict(row)
            for (label, probability), entry in zip(ranks, row["top_k"]):
                flat[label], flat[probability] = entry["label"], entry["probability"]
            writer.writerow(flat)

    _write_atomic(path, write)


def main(argv: Sequence[str]) -> int:
    """Runs ``add-lightning classify ARGS`` (``argv`` includes ``classify``); exit status.

    Returns:
        0 when every file was classified or found silent, 1 when some could not be read
        (each named on stderr; the others are classified and written), 2 when the command
        line does not parse.

    Raises:
        ValueError: On invalid arguments, an unusable checkpoint or no input file at all.
    """
    import argparse

    parser = build_parser()
    try:
        args = parser.parse_args(list(argv[1:]))
    except argparse.ArgumentError as error:
        message = " ".join(str(error).split())  # jsonargparse's type errors span lines
        sys.stderr.write(
            f"add-lightning classify: error: {message} (see `add-lightning classify --help`)\n"
        )
        return USAGE_STATUS
    _check_arguments(args)
    paths = expand_inputs(args.inputs, args.csv_column)

    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from add_lightning.data.pipeline import WaveformPipeline
    from add_lightning.inference import (
        SILENCE_FLOOR_DBFS,
        concat_inputs,
        load_trained_model,
        pool_windows,
        silent_windows,
    )
    from add_lightning.models.prediction import save_npz_atomic

    trained = load_trained_model(args.ckpt_path, map_location=args.device)
    if isinstance(trained.pipeline, WaveformPipeline) and args.hop_frames is not None:
        raise ValueError(
            f"`--hop_frames` applies to fbank models, but {args.ckpt_path} is a waveform model "
            "(a speech encoder), which scores each file whole; leave `--hop_frames` out."
        )
    trained.model.to(args.device)
    class_names = trained.class_names
    top_k = min(args.top_k, len(class_names))
    loader = DataLoader(
        _FileWindows(paths, trained.pipeline, args.hop_frames),
        batch_size=None,
        num_workers=args.num_workers,
    )
    show = args.progress if args.progress is not None else len(paths) > 1 and sys.stderr.isatty()
    bar = tqdm(loader, total=len(paths), desc="classify", unit="file", disable=not show)

    rows: list[dict[str, Any] | None] = [None] * len(paths)
    window_rows: dict[int, list[dict[str, Any]]] = {}
    embeddings: dict[int, Any] = {}
    probabilities: dict[int, Any] = {}
    pending: list[tuple[int, Any]] = []  # (file index, its ClipWindows)

    def best(scores: torch.Tensor) -> list[dict[str, Any]]:
        values, indices = scores.topk(top_k)
        return [
            {"label": class_names[int(i)], "probability": float(p)} for p, i in zip(values, indices)
        ]

    def flush() -> None:
        if not pending:
            return
        window_probabilities, window_embeddings = trained.score_windows(
            concat_inputs([clip.inputs for _, clip in pending]),
            args.batch_size,
            torch.cat([clip.lengths for _, clip in pending]),
        )
        offset = 0
        for index, clip in pending:
            span = slice(offset, offset + len(clip.lengths))
            offset = span.stop
            scores = window_probabilities[span]
            silent = silent_windows(clip.level_dbfs, args.silence_db)
            pooled, embedding = pool_windows(scores, window_embeddings[span], silent, args.pooling)
            path = str(paths[index])
            if args.windows is not None:
                window_rows[index] = [
                    {
                        "path": path,
                        "window": window,
                        "start_s": round(float(clip.start_s[window]), 6),
                        "end_s": round(float(clip.end_s[window]), 6),
                        "level_dbfs": round(float(clip.level_dbfs[window]), 2),
                        "silent": bool(silent[window]),
                        "top_k": best(scores[window]),
                    }
                    for window in range(len(silent))
                ]
            entries, by_class, line = [], None, "(silent)"  # silent throughout: no label
            if pooled is not None:
                embeddings[index], probabilities[index] = embedding, pooled
                entries, by_class = best(pooled), dict(zip(class_names, pooled.tolist()))
                line = "\t".join(f"{e['label']} {e['probability']:.4f}" for e in entries)
            rows[index] = {
                "path": path,
                "status": "silent" if pooled is None else "classified",
                "num_windows": len(silent),
                "num_silent_windows": int(silent.sum()),
                "top_k": entries,
                "probabilities": by_class,
                "error": None,
            }
            bar.write(f"{_escape_controls(path)}\t{line}", file=sys.stdout)
        pending.clear()

    failures = 0
    for index, item, error in bar:
        if error is not None:
            failures += 1
            flush()  # keep stdout in input order
            rows[index] = {
                "path": str(paths[index]),
                "status": "unreadable",
                "num_windows": 0,
                "num_silent_windows": 0,
                "top_k": [],
                "probabilities": None,
                "error": error,
            }
            sys.stdout.flush()  # the results so far before the message, in a shared log
            bar.write(
                f"add-lightning classify: skipped: {_escape_controls(error)}", file=sys.stderr
            )
            continue
        pending.append((index, item))
        if sum(len(clip.lengths) for _, clip in pending) >= args.batch_size:
            flush()
    flush()
    bar.close()

    done = [row for row in rows if row is not None]
    silence = None
    if args.silence_db is not None:
        silence = {"below_peak_db": args.silence_db, "floor_dbfs": SILENCE_FLOOR_DBFS}
    meta = {
        "checkpoint": str(args.ckpt_path),
        "class_names": class_names,
        "pooling": args.pooling,
        "silence": silence,
    }
    if args.output is not None:
        before = ["path", "status", "num_windows", "num_silent_windows"]
        _write_rows(Path(args.output), "clips", done, meta, top_k, before, ["error"])
    if args.windows is not None:
        before = ["path", "window", "start_s", "end_s", "level_dbfs", "silent"]
        every_window = [row for index in sorted(window_rows) for row in window_rows[index]]
        _write_rows(Path(args.windows), "windows", every_window, meta, top_k, before)
    if args.embeddings is not None and embeddings:
        order = sorted(embeddings)
        save_npz_atomic(
            args.embeddings,
            paths=np.array([str(paths[i]) for i in order]),
            embeddings=torch.stack([embeddings[i] for i in order]).numpy(),
            probabilities=torch.stack([probabilities[i] for i in order]).numpy(),
            class_names=np.array(class_names),
        )
    outputs = (args.output, args.windows, args.embeddings if embeddings else None)
    written = [name for name in outputs if name]
    classified = sum(row["status"] == "classified" for row in done)
    silent_files = sum(row["status"] == "silent" for row in done)
    summary = f"classified {classified} of {len(paths)} files"
    if silent_files:
        summary += f"; {silent_files} silent throughout (no label)"
    if failures:
        summary += f"; {failures} could not be read (named above)"
    left_out = sum(row["num_silent_windows"] for row in done)
    if left_out:
        summary += (
            f"; {left_out} of {sum(row['num_windows'] for row in done)} windows left out as "
            f"silent (more than {args.silence_db:g} dB below their file's loudest or below "
            f"{SILENCE_FLOOR_DBFS:g} dBFS)"
        )
    if written:
        summary += f"; wrote {', '.join(written)}"
    sys.stdout.flush()
    sys.stderr.write(f"add-lightning classify: {summary}.\n")
    return ERROR_STATUS if failures else 0
