"""Executes notebooks/embedding_geometry.ipynb end to end on tiny fake exports, so it can't rot."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "embedding_geometry.ipynb"


def _fake_run(run_dir: Path, seed: int, num_classes: int = 3, per_class: int = 6) -> Path:
    """A run directory holding a test_embeddings.npz as EmbeddingWriter writes it."""
    generator = np.random.default_rng(seed)
    targets = np.repeat(np.arange(num_classes), per_class).astype(np.int64)
    centres = generator.normal(size=(num_classes, 16))
    embeddings = centres[targets] + 0.4 * generator.normal(size=(len(targets), 16))
    run_dir.mkdir(parents=True)
    np.savez(
        run_dir / "test_embeddings.npz",
        embeddings=embeddings.astype(np.float32),
        logits=np.zeros((len(targets), num_classes), dtype=np.float32),
        targets=targets,
        clip_ids=np.array([f"clip{i}" for i in range(len(targets))]),
        class_names=np.array(["cat", "dog", "rain"]),
    )
    return run_dir


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_notebook_runs_on_exported_embeddings(tmp_path, monkeypatch):
    runs = [_fake_run(tmp_path / "exp" / f"fold1_seed{seed}", seed) for seed in (0, 1)]
    monkeypatch.setenv("ADD_RUNS", ":".join(map(str, runs)))
    monkeypatch.setenv("ADD_CLASSES", "2")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The kernelspec `python3` launches "python", which jupyter_client maps to sys.executable
    # (this venv); checked here so that a system kernel can never run the notebook silently.
    from jupyter_client.kernelspec import KernelSpecManager

    argv = KernelSpecManager().get_kernel_spec("python3").argv
    assert argv[0] in {"python", "python3", sys.executable}
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = [
        output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    ]
    assert not [output for output in outputs if output.output_type == "error"]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) == 3  # heat maps, property bars, PCA projection
    text = "".join(output.get("text", "") for output in outputs)
    assert "exp/fold1_seed0: 18 test clips, D = 16, 3 classes" in text
    assert "mu_p" in text
    # The retrieval numbers of each run, against pytorch-metric-learning's AccuracyCalculator.
    from test_metrics_retrieval import accuracy_calculator

    for run in runs:
        with np.load(run / "test_embeddings.npz") as data:
            embeddings, targets = data["embeddings"], data["targets"]
        expected = accuracy_calculator(torch.from_numpy(embeddings), torch.from_numpy(targets))
        row = next(line for line in text.splitlines() if line.startswith(f"exp/{run.name} "))
        assert f"{expected['map_at_r']:.4f}" in row.split()[-3:]
        assert f"{expected['precision_at_1']:.4f}" in row.split()[-5:]
