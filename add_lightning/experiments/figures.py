"""The paper's analysis figure from exported test embeddings, and the property statistics.

For each run (a run directory holding ``test_embeddings.npz`` of ``cv`` or ``predictions.npz``
of ``add-lightning predict``, or such a file):

- heat maps over class pairs ``(a, b)`` of a subset of classes: top row the mean of the cosine
  distance ``d(z_i, z_j)`` (``y_i = a, y_j = b, i != j``), bottom row its coefficient of
  variation, one column per run (docs/method.md, "The analysis figure");
- the four property statistics ``mu_p, sigma_p, mu_n, sigma_n`` over the whole test set, as a
  grouped bar chart, next to the retrieval metrics ``precision_at_1``, ``r_precision`` and
  ``map_at_r`` (and a Markdown table of all these numbers per run).

The numbers come from :func:`add_lightning.metrics.pairwise_geometry` and
:func:`add_lightning.metrics.pairwise_retrieval`; this module only loads and draws. Figures
use matplotlib's object API (no pyplot, no display needed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from add_lightning.atomic import atomic_path, write_text_atomic
from add_lightning.checks import check_int
from add_lightning.experiments.aggregate import markdown_table
from add_lightning.experiments.files import EMBEDDINGS_FILENAME
from add_lightning.metrics import (
    RETRIEVAL_SCALAR_KEYS,
    mask_empty_class_pairs,
    pairwise_geometry,
    pairwise_retrieval,
)

__all__ = [
    "PROPERTY_KEYS",
    "RunEmbeddings",
    "load_run_embeddings",
    "make_figures",
    "plot_class_pair_heatmaps",
    "plot_property_statistics",
    "run_geometry",
    "run_retrieval",
    "save_figure",
    "select_classes",
    "statistics_table",
]

PROPERTY_KEYS = ("mu_p", "sigma_p", "mu_n", "sigma_n")
_PROPERTY_LABELS = {
    "mu_p": r"$\mu_p$",
    "sigma_p": r"$\sigma_p$",
    "mu_n": r"$\mu_n$",
    "sigma_n": r"$\sigma_n$",
}
_REQUIRED_ARRAYS = ("embeddings", "targets", "class_names")
# What `add-lightning predict` writes into the run directory (EmbeddingWriter's default file);
# it holds the arrays of _REQUIRED_ARRAYS too.
PREDICTIONS_FILENAME = "predictions.npz"
_RUN_FILES = (EMBEDDINGS_FILENAME, PREDICTIONS_FILENAME)


@dataclass(frozen=True)
class RunEmbeddings:
    """Test embeddings of one run, as exported by :class:`~add_lightning.models.EmbeddingWriter`.

    Shape:
        - embeddings: ``[N, D]``
        - targets: ``[N]`` (int64 class ids)
    """

    label: str
    embeddings: np.ndarray
    targets: np.ndarray
    class_names: list[str]


def _embeddings_file(path: Path) -> Path:
    """The file of ``path``: itself, or a run directory's first file of ``_RUN_FILES``."""
    if not path.is_dir():
        if not path.is_file():
            raise FileNotFoundError(
                f"Expected a run directory or an .npz file, but {path} does not exist"
            )
        return path
    for name in _RUN_FILES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(
        f"Expected the run directory {path} to hold {EMBEDDINGS_FILENAME} (written by `cv`) or "
        f"{PREDICTIONS_FILENAME}, but it holds neither. For a run of `fit`, write its "
        f"embeddings first: add-lightning predict --config {path / 'config.yaml'} --ckpt_path "
        f"{path / 'checkpoints' / 'last.ckpt'}"
    )


def default_label(path: str | os.PathLike[str]) -> str:
    """``experiment/fold1_seed0`` for a run directory (or its ``test_embeddings.npz``), else
    the file's stem."""
    path = Path(path)
    if path.is_file() and path.name in _RUN_FILES:
        path = path.parent
    if path.is_dir():
        return "/".join(path.resolve().parts[-2:])
    return path.stem


def load_run_embeddings(path: str | os.PathLike[str], label: str | None = None) -> RunEmbeddings:
    """Loads a run's exported test embeddings.

    Args:
        path: A run directory (holding ``test_embeddings.npz`` or ``predictions.npz``) or an
            ``.npz`` file.
        label: Name of the run in figures; default: :func:`default_label`.

    Raises:
        FileNotFoundError: If the file does not exist, or the run directory holds neither file
            (the message says how to write ``predictions.npz``).
        ValueError: If it lacks ``embeddings``, ``targets`` or ``class_names``, or their shapes
            or class ids do not fit together.
    """
    file = _embeddings_file(Path(path))
    with np.load(file, allow_pickle=False) as data:
        missing = [key for key in _REQUIRED_ARRAYS if key not in data.files]
        if missing:
            raise ValueError(
                f"Expected arrays {list(_REQUIRED_ARRAYS)} in {file}, but {missing} are missing "
                f"(found {data.files})"
            )
        embeddings = np.asarray(data["embeddings"], dtype=np.float32)
        targets = np.asarray(data["targets"])
        class_names = [str(name) for name in data["class_names"]]
    if embeddings.ndim != 2 or targets.shape != (embeddings.shape[0],):
        raise ValueError(
            f"Expected `embeddings` [N, D] and `targets` [N] in {file}, got shapes "
            f"{embeddings.shape} and {targets.shape}"
        )
    if not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"Expected integer `targets` in {file}, got dtype {targets.dtype}")
    if targets.size and (targets.min() < 0 or targets.max() >= len(class_names)):
        raise ValueError(
            f"Expected `targets` in [0, {len(class_names) - 1}] (one per class name) in {file}, "
            f"got values in [{targets.min()}, {targets.max()}]"
        )
    return RunEmbeddings(
        label or default_label(path), embeddings, targets.astype(np.int64), class_names
    )


def run_geometry(run: RunEmbeddings) -> dict[str, np.ndarray]:
    """:func:`~add_lightning.metrics.pairwise_geometry` of a run as float64 NumPy arrays.

    Entries of ``class_mean``/``class_cv`` without pairs (a class with fewer than 2 samples on
    the diagonal, or no sample) are NaN, so that they are drawn blank rather than as 0.
    """
    geometry = pairwise_geometry(
        torch.from_numpy(run.embeddings), torch.from_numpy(run.targets), len(run.class_names)
    )
    result = {
        key: value.double().numpy() for key, value in geometry.items() if key != "class_count"
    }
    for key in ("class_mean", "class_cv"):
        result[key] = mask_empty_class_pairs(geometry[key], geometry["class_count"]).numpy()
    return result


def run_retrieval(run: RunEmbeddings, knn_k: Sequence[int] = (5,)) -> dict[str, float]:
    """:func:`~add_lightning.metrics.pairwise_retrieval` of a run's test embeddings, as floats
    (computed in float64)."""
    retrieval = pairwise_retrieval(
        torch.from_numpy(run.embeddings).double(),
        torch.from_numpy(run.targets),
        len(run.class_names),
        knn_k,
    )
    return {key: float(value) for key, value in retrieval.items()}


def statistics_table(
    labels: Sequence[str],
    geometries: Sequence[dict[str, np.ndarray]],
    retrievals: Sequence[dict[str, float]],
) -> str:
    """A Markdown table, one row per run: the four properties, then the retrieval metrics."""
    keys = list(retrievals[0]) if retrievals else []
    rows = [
        [
            label,
            *(f"{float(geometry[key]):.4f}" for key in PROPERTY_KEYS),
            *(f"{retrieval[key]:.4f}" for key in keys),
        ]
        for label, geometry, retrieval in zip(labels, geometries, retrievals)
    ]
    return markdown_table(["run", *PROPERTY_KEYS, *keys], rows)


def select_classes(
    num_classes: int, first: int | None = 10, class_ids: Sequence[int] | None = None
) -> list[int]:
    """The class ids to draw: ``class_ids`` if given, else the first ``first`` (all if fewer).

    Raises:
        ValueError: If ``first`` is not positive or a class id is out of ``[0, num_classes - 1]``.
    """
    if class_ids:
        bad = [i for i in class_ids if not 0 <= i < num_classes]
        if bad:
            raise ValueError(
                f"Expected argument `class_ids` in [0, {num_classes - 1}], got {bad} out of range"
            )
        return list(class_ids)
    if first is None:
        return list(range(num_classes))
    check_int("classes", first)
    return list(range(min(first, num_classes)))


def _common_class_names(runs: Sequence[RunEmbeddings]) -> list[str]:
    if not runs:
        raise ValueError("Expected at least one run, got none")
    for run in runs[1:]:
        if run.class_names != runs[0].class_names:
            raise ValueError(
                f"Expected all runs to share one set of classes, but {runs[0].label} and "
                f"{run.label} have different class names"
            )
    return runs[0].class_names


def plot_class_pair_heatmaps(
    labels: Sequence[str],
    geometries: Sequence[dict[str, np.ndarray]],
    class_ids: Sequence[int],
    class_names: Sequence[str],
) -> Figure:
    """The paper's analysis figure: mean of ``d`` (top) and its CV (bottom) per class pair.

    One column per run; each row shares one colour scale so that runs compare at a glance.
    A good embedding has a low, uniform diagonal mean, a high, uniform off-diagonal mean and a
    low CV everywhere.

    Shape:
        - geometries[i]["class_mean"], geometries[i]["class_cv"]: ``[C, C]``
    """
    ids = np.asarray(class_ids)
    names = [class_names[i] for i in ids]
    rows = (("class_mean", "mean of d"), ("class_cv", "CV of d"))
    columns = len(geometries)
    side = 1.2 + 0.32 * len(ids)
    figure = Figure(figsize=(side * columns + 1.5, 2 * side + 0.8), layout="constrained")
    grid = figure.subplots(2, columns, squeeze=False)
    for row, (key, title) in enumerate(rows):
        matrices = [geometry[key][np.ix_(ids, ids)] for geometry in geometries]
        finite = np.concatenate(
            [matrix[np.isfinite(matrix)] for matrix in matrices] + [np.zeros(1)]
        )
        vmax = float(finite.max()) or 1.0
        for column, (label, matrix) in enumerate(zip(labels, matrices)):
            axes = grid[row, column]
            image = axes.imshow(
                np.ma.masked_invalid(matrix),
                cmap="viridis",
                vmin=0.0,
                vmax=vmax,
                interpolation="nearest",
            )
            axes.set_xticks(range(len(ids)), names, rotation=90, fontsize=7)
            axes.set_yticks(range(len(ids)), names if column == 0 else [], fontsize=7)
            axes.set_title(label if row == 0 else "", fontsize=9)
        figure.colorbar(image, ax=list(grid[row]), label=title, shrink=0.9)
    return figure


def _grouped_bars(
    axes, labels: Sequence[str], values: Sequence[Sequence[float]], names: Sequence[str]
) -> None:
    width = 0.8 / max(1, len(labels))
    positions = np.arange(len(names))
    for index, (label, row) in enumerate(zip(labels, values)):
        axes.bar(positions + (index - (len(labels) - 1) / 2) * width, row, width, label=label)
    axes.set_xticks(positions, names)
    axes.legend(fontsize=7)


def plot_property_statistics(
    labels: Sequence[str],
    geometries: Sequence[dict[str, np.ndarray]],
    retrievals: Sequence[dict[str, float]] | None = None,
) -> Figure:
    """Grouped bars of ``mu_p, sigma_p, mu_n, sigma_n`` (the ADD terms), one bar per run, and
    with ``retrievals`` a second panel of ``precision_at_1``, ``r_precision``, ``map_at_r``."""
    panels = 1 if retrievals is None else 2
    figure = Figure(
        figsize=(panels * (2.0 + 1.6 * len(PROPERTY_KEYS) * max(1, len(labels)) / 3), 3.5),
        layout="constrained",
    )
    grid = figure.subplots(1, panels, squeeze=False)[0]
    properties = [[float(geometry[key]) for key in PROPERTY_KEYS] for geometry in geometries]
    _grouped_bars(grid[0], labels, properties, [_PROPERTY_LABELS[key] for key in PROPERTY_KEYS])
    grid[0].set_ylabel("value on the test set")
    grid[0].set_title("Embedding properties (lower is better)")
    if retrievals is not None:
        scores = [[retrieval[key] for key in RETRIEVAL_SCALAR_KEYS] for retrieval in retrievals]
        _grouped_bars(grid[1], labels, scores, ["P@1", "R-precision", "MAP@R"])
        grid[1].set_ylim(0.0, 1.0)
        grid[1].set_title("Retrieval, cosine (higher is better)")
    return figure


def save_figure(figure: Figure, path: str | os.PathLike[str], dpi: int = 150) -> Path:
    """Saves ``figure`` as PNG to ``path`` atomically."""
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def make_figures(
    paths: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    classes: int | None = 10,
    class_ids: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
    properties_output: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path]:
    """Draws the heat-map figure to ``output`` and the property bars next to it.

    Args:
        paths: Run directories or ``.npz`` exports, one column each.
        output: PNG of the heat maps.
        classes: Draw the first ``classes`` class ids (ignored when ``class_ids`` is given).
        class_ids: Explicit class ids to draw.
        labels: Column titles, one per path; default: :func:`default_label`.
        properties_output: PNG of the bar charts (properties, retrieval); default
            ``<output stem>_properties.png``.

    Also writes ``<output stem>_numbers.md``: :func:`statistics_table` of the runs.

    Returns:
        The paths of the two PNG files.

    Raises:
        ValueError: If ``labels`` does not have one entry per path, the runs do not share their
            classes, or the class selection is invalid.
    """
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"Expected one label per run ({len(paths)}), got {len(labels)} labels")
    runs = [
        load_run_embeddings(path, None if labels is None else labels[i])
        for i, path in enumerate(paths)
    ]
    class_names = _common_class_names(runs)
    ids = select_classes(len(class_names), classes, class_ids)
    geometries = [run_geometry(run) for run in runs]
    retrievals = [run_retrieval(run) for run in runs]
    run_labels = [run.label for run in runs]
    output = Path(output)
    properties = (
        Path(properties_output)
        if properties_output
        else output.with_name(f"{output.stem}_properties.png")
    )
    save_figure(plot_class_pair_heatmaps(run_labels, geometries, ids, class_names), output)
    save_figure(plot_property_statistics(run_labels, geometries, retrievals), properties)
    numbers = output.with_name(f"{output.stem}_numbers.md")
    write_text_atomic(numbers, statistics_table(run_labels, geometries, retrievals))
    return output, properties
