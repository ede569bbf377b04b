"""The embedding-geometry metric against a brute-force float64 re-statement of docs/method.md."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from gloo_ranks import run_ranks
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from add_lightning.metrics import GEOMETRY_SCALAR_KEYS, EmbeddingGeometry, pairwise_geometry

TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _cv(values: list[float]) -> float:
    mean = _mean(values)
    return _std(values) / mean if mean != 0 else 0.0


def brute_force(embeddings: Tensor, targets: Tensor, num_classes: int) -> dict[str, Tensor]:
    """docs/method.md's definitions, pair by pair in Python floats (float64)."""
    rows = embeddings.double().tolist()
    labels = targets.tolist()
    unit = []
    for row in rows:
        norm = max(math.sqrt(math.fsum(x * x for x in row)), 1e-12)  # F.normalize semantics
        unit.append([x / norm for x in row])
    same, different = [], []
    per_pair: dict[tuple[int, int], list[float]] = {}
    for i, (z_i, y_i) in enumerate(zip(unit, labels)):
        for j, (z_j, y_j) in enumerate(zip(unit, labels)):
            if i == j:
                continue
            d = 1.0 - math.fsum(a * b for a, b in zip(z_i, z_j))
            (same if y_i == y_j else different).append(d)
            per_pair.setdefault((y_i, y_j), []).append(d)
    d_p = [d**2 for d in same]
    d_n = [(1 - d) ** 2 for d in different]
    scalars = {
        "mu_p": _mean(d_p),
        "sigma_p": _std(d_p),
        "mu_n": _mean(d_n),
        "sigma_n": _std(d_n),
        "intra_class/mean": _mean(same),
        "intra_class/std": _std(same),
        "intra_class/cv": _cv(same),
        "inter_class/mean": _mean(different),
        "inter_class/std": _std(different),
        "inter_class/cv": _cv(different),
    }
    expected = {key: torch.tensor(value, dtype=torch.float64) for key, value in scalars.items()}
    pairs = [[per_pair.get((a, b), []) for b in range(num_classes)] for a in range(num_classes)]
    expected["class_mean"] = torch.tensor([[_mean(v) for v in row] for row in pairs]).double()
    expected["class_cv"] = torch.tensor([[_cv(v) for v in row] for row in pairs]).double()
    expected["class_count"] = torch.tensor([labels.count(c) for c in range(num_classes)])
    return expected


def assert_matches(result: dict[str, Tensor], expected: dict[str, Tensor], atol: float) -> None:
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert torch.isfinite(result[key].double()).all(), key
        assert result[key].shape == value.shape, key
        torch.testing.assert_close(result[key].cpu().double(), value.double(), rtol=0, atol=atol)


def _random(num_samples: int, dim: int, num_classes: int, seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(num_samples, dim, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, num_classes, (num_samples,), generator=generator)
    return embeddings, targets


def _composition(name: str) -> tuple[Tensor, Tensor, int]:
    """Embeddings [N, 8], targets [N] and C for one named batch composition."""
    embeddings, targets = _random(40, 8, 5, seed=0)
    if name == "one_class":
        targets = torch.zeros(40, dtype=torch.long)
    elif name == "singletons":  # every class has one sample: no same-class pair
        embeddings, targets = embeddings[:5], torch.tensor([3, 0, 4, 1, 2])
    elif name == "empty_class":
        targets = torch.tensor([0, 1, 3, 4]).repeat(10)
    elif name == "identical":  # exactly representable: d is exactly 0 for every pair
        embeddings = torch.tensor([3.0, 3.0, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0]).repeat(40, 1)
    elif name == "zero_vectors":
        embeddings[::4] = 0.0
    elif name == "two_samples":
        embeddings, targets = embeddings[:2], torch.tensor([1, 1])
    elif name == "empty":
        embeddings, targets = embeddings[:0], targets[:0]
    return embeddings, targets, 5


COMPOSITIONS = [
    "random",
    "one_class",
    "singletons",
    "empty_class",
    "identical",
    "zero_vectors",
    "two_samples",
    "empty",
]


@DTYPES
@pytest.mark.parametrize("composition", COMPOSITIONS)
def test_functional_matches_brute_force(composition: str, dtype: torch.dtype) -> None:
    embeddings, targets, num_classes = _composition(composition)
    embeddings = embeddings.to(dtype)
    result = pairwise_geometry(embeddings, targets, num_classes)
    assert_matches(result, brute_force(embeddings, targets, num_classes), TOLERANCE[dtype])
    assert result["mu_p"].dtype == dtype
    assert result["class_count"].dtype == torch.long


def test_half_precision_is_computed_in_float32() -> None:
    embeddings, targets, num_classes = _composition("random")
    embeddings = embeddings.to(torch.bfloat16)
    result = pairwise_geometry(embeddings, targets, num_classes)
    assert result["mu_p"].dtype == torch.float32
    assert_matches(result, brute_force(embeddings, targets, num_classes), atol=1e-4)


@pytest.mark.parametrize("chunk_size", [1, 3, 7], ids=["chunk1", "chunk3", "chunk7"])
@pytest.mark.parametrize("composition", ["random", "one_class", "zero_vectors"])
def test_chunking_does_not_change_the_result(composition: str, chunk_size: int) -> None:
    embeddings, targets, num_classes = _composition(composition)
    whole = pairwise_geometry(embeddings, targets, num_classes, chunk_size=len(targets))
    chunked = pairwise_geometry(embeddings, targets, num_classes, chunk_size=chunk_size)
    assert_matches(chunked, whole, atol=1e-12)


def test_named_statistics_on_hand_built_embeddings() -> None:
    # Class 0: e0, e0 (d = 0); class 1: e1, -e1 (d = 2); across classes every d = 1.
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    result = pairwise_geometry(embeddings, torch.tensor([0, 0, 1, 1]), 2)
    # D_p = {0, 0, 4, 4}: mean 2, unbiased std sqrt(16/3); D_n = {0} x 8.
    torch.testing.assert_close(result["mu_p"], torch.tensor(2.0))
    torch.testing.assert_close(result["sigma_p"], torch.tensor(math.sqrt(16 / 3)))
    torch.testing.assert_close(result["mu_n"], torch.tensor(0.0))
    torch.testing.assert_close(result["sigma_n"], torch.tensor(0.0))
    torch.testing.assert_close(result["inter_class/cv"], torch.tensor(0.0))
    torch.testing.assert_close(result["class_mean"], torch.tensor([[0.0, 1.0], [1.0, 2.0]]))
    torch.testing.assert_close(result["class_cv"], torch.zeros(2, 2))


def test_concentrated_distances_keep_their_spread() -> None:
    """Variances of values with std/mean ~ 1e-7 survive (no power-sum cancellation)."""
    generator = torch.Generator().manual_seed(1)
    base = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [0.5, math.sqrt(0.75), 0.0, 0.0]], dtype=torch.float64
    )
    targets = torch.arange(40) % 2
    noise = 1e-7 * torch.randn(40, 4, generator=generator, dtype=torch.float64)
    embeddings = base[targets] + noise
    result = pairwise_geometry(embeddings, targets, 2, chunk_size=3)
    expected = brute_force(embeddings, targets, 2)
    # Same-class distances are ~1e-14, pure rounding: only the cross-class values are compared.
    pairs = [
        (result[key], expected[key]) for key in ("inter_class/std", "inter_class/cv", "sigma_n")
    ]
    pairs.append((result["class_cv"][0, 1], expected["class_cv"][0, 1]))
    for actual, reference in pairs:
        assert float(reference) > 0
        torch.testing.assert_close(actual, reference, rtol=1e-5, atol=0)


def test_multiple_updates_equal_one() -> None:
    embeddings, targets, num_classes = _composition("random")
    once, batched = EmbeddingGeometry(num_classes), EmbeddingGeometry(num_classes, chunk_size=4)
    once.update(embeddings, targets)
    for batch in range(0, 40, 7):
        batched.update(embeddings[batch : batch + 7], targets[batch : batch + 7])
    assert_matches(batched.compute(), once.compute(), atol=1e-12)
    assert_matches(once.compute(), brute_force(embeddings, targets, num_classes), atol=1e-6)


def test_merge_state_and_reset() -> None:
    embeddings, targets, num_classes = _composition("random")
    first, second = EmbeddingGeometry(num_classes), EmbeddingGeometry(num_classes)
    first.update(embeddings[:25], targets[:25])
    second.update(embeddings[25:], targets[25:])
    first.merge_state(second)
    assert_matches(first.compute(), brute_force(embeddings, targets, num_classes), atol=1e-6)
    first.reset()
    first.update(embeddings[:10], targets[:10])
    expected = brute_force(embeddings[:10], targets[:10], num_classes)
    assert_matches(first.compute(), expected, atol=1e-6)


def test_compute_without_update_gives_zeros() -> None:
    metric = EmbeddingGeometry(3)
    with pytest.warns(UserWarning, match="compute"):
        result = metric.compute()
    assert all(float(result[key]) == 0.0 for key in GEOMETRY_SCALAR_KEYS)
    assert result["class_mean"].shape == (3, 3)
    assert result["class_count"].tolist() == [0, 0, 0]


def _ddp_worker(rank: int, world_size: int) -> None:
    embeddings, targets, num_classes = _composition("random")
    split = 23  # uneven halves exercise the gather of unequal sizes
    part = slice(0, split) if rank == 0 else slice(split, None)
    metric = EmbeddingGeometry(num_classes)
    for batch in torch.split(torch.arange(40)[part], 8):
        metric.update(embeddings[batch], targets[batch])
    expected = brute_force(embeddings, targets, num_classes)
    assert_matches(metric.compute(), expected, atol=1e-6)


def test_ddp_state_reduction_matches_single_process() -> None:
    run_ranks(_ddp_worker)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@DTYPES
def test_cuda_matches_brute_force(dtype: torch.dtype) -> None:
    embeddings, targets, num_classes = _composition("empty_class")
    embeddings = embeddings.to(dtype)
    metric = EmbeddingGeometry(num_classes, chunk_size=6).to("cuda")
    metric.update(embeddings.cuda(), targets.cuda())
    result = metric.compute()
    assert all(value.device.type == "cuda" for value in result.values())
    assert_matches(result, brute_force(embeddings, targets, num_classes), TOLERANCE[dtype])


def test_lightning_validation_epoch(tmp_path) -> None:
    import lightning as L  # imported here so that the DDP test's workers start faster

    class EmbeddingModule(L.LightningModule):
        """Identity 'model' whose validation epoch logs the geometry of its inputs."""

        def __init__(self, num_classes: int) -> None:
            super().__init__()
            self.geometry = EmbeddingGeometry(num_classes)
            self.logged: dict[str, Tensor] = {}

        def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
            self.geometry.update(*batch)

        def on_validation_epoch_end(self) -> None:
            self.logged = self.geometry.compute()
            self.log_dict({f"val/geometry/{k}": self.logged[k] for k in GEOMETRY_SCALAR_KEYS})
            self.geometry.reset()

    embeddings, targets, num_classes = _composition("random")
    loader = DataLoader(TensorDataset(embeddings, targets), batch_size=8)
    module = EmbeddingModule(num_classes)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    (metrics,) = trainer.validate(module, loader, verbose=False)
    expected = brute_force(embeddings, targets, num_classes)
    assert_matches(module.logged, expected, atol=1e-6)
    assert metrics["val/geometry/mu_p"] == pytest.approx(float(expected["mu_p"]), abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0}, "`num_classes` to be a positive int, got 0"),
        ({"num_classes": 2.0}, "`num_classes` to be a positive int, got 2.0"),
        ({"num_classes": True}, "`num_classes` to be a positive int, got True"),
        ({"chunk_size": 0}, "`chunk_size` to be a positive int, got 0"),
        ({"embeddings": torch.ones(4)}, r"`embeddings` to have shape \[N, D\], got shape \(4,\)"),
        ({"embeddings": torch.ones(4, 2, dtype=torch.long)}, "floating tensor, got dtype"),
        (
            {"targets": torch.zeros(4, 1, dtype=torch.long)},
            r"`targets` to have shape \[N\] = \[4\]",
        ),
        ({"targets": torch.zeros(3, dtype=torch.long)}, r"got shape \(3,\)"),
        (
            {"targets": torch.zeros(4)},
            "`targets` to hold integer class ids, got dtype torch.float32",
        ),
        ({"targets": torch.tensor([0, 1, 2, 3])}, r"\[0, 2\], got values in \[0, 3\]"),
        ({"targets": torch.tensor([0, -1, 1, 1])}, r"\[0, 2\], got values in \[-1, 1\]"),
    ],
    ids=[
        "num_classes_zero",
        "num_classes_float",
        "num_classes_bool",
        "chunk_size_zero",
        "embeddings_1d",
        "embeddings_int",
        "targets_2d",
        "targets_length",
        "targets_float",
        "targets_too_large",
        "targets_negative",
    ],
)
def test_user_errors(kwargs: dict, match: str) -> None:
    arguments = {
        "embeddings": torch.ones(4, 2),
        "targets": torch.tensor([0, 1, 2, 2]),
        "num_classes": 3,
        "chunk_size": None,
    } | kwargs
    with pytest.raises(ValueError, match=match):
        pairwise_geometry(**arguments)
    with pytest.raises(ValueError, match=match):
        metric = EmbeddingGeometry(arguments["num_classes"], chunk_size=arguments["chunk_size"])
        metric.update(arguments["embeddings"], arguments["targets"])
