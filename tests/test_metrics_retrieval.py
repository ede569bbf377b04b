"""The retrieval metric against pytorch-metric-learning's AccuracyCalculator and by hand."""

from __future__ import annotations

import math

import pytest
import torch
from gloo_ranks import run_ranks
from torch import Tensor

from add_lightning.metrics import EmbeddingRetrieval, pairwise_retrieval, retrieval_keys

# AccuracyCalculator's names of the three retrieval metrics.
PML_NAMES = {
    "precision_at_1": "precision_at_1",
    "r_precision": "r_precision",
    "map_at_r": "mean_average_precision_at_r",
}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])


def accuracy_calculator(embeddings: Tensor, targets: Tensor) -> dict[str, float]:
    """pytorch-metric-learning's AccuracyCalculator, each sample querying all others.

    Its neighbour search (CustomKNN with CosineSimilarity, the brute-force one) runs in
    float64 here: AccuracyCalculator casts its inputs to float32, where near-ties of random
    embeddings could swap two neighbours between implementations.
    """
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    knn = CustomKNN(CosineSimilarity())

    def knn_float64(query, k, reference, ref_includes_query):
        return knn(query.double(), k, reference.double(), ref_includes_query)

    calculator = AccuracyCalculator(
        include=tuple(PML_NAMES.values()), k=None, device=torch.device("cpu"), knn_func=knn_float64
    )
    result = calculator.get_accuracy(embeddings.float(), targets)
    return {ours: result[theirs] for ours, theirs in PML_NAMES.items()}


def brute_force_knn(embeddings: Tensor, targets: Tensor, k: int) -> float:
    """Leave-one-out k-NN accuracy in Python floats: ties of similarity by index, of votes by
    the nearer best-ranked member."""
    rows = embeddings.double().tolist()
    labels = targets.tolist()
    unit = []
    for row in rows:
        norm = math.sqrt(math.fsum(x * x for x in row))
        unit.append([x / norm if norm > 0 else 0.0 for x in row])
    correct = 0
    for i, z_i in enumerate(unit):
        others = [(-math.fsum(a * b for a, b in zip(z_i, z_j)), j) for j, z_j in enumerate(unit)]
        ranked = [labels[j] for _, j in sorted(others) if j != i][:k]
        votes: dict[int, tuple[int, int]] = {}
        for rank, label in enumerate(ranked):
            count, first = votes.get(label, (0, rank))
            votes[label] = (count + 1, first)
        predicted = max(votes, key=lambda label: (votes[label][0], -votes[label][1]))
        correct += predicted == labels[i]
    return correct / len(labels)


def brute_force_retrieval(embeddings: Tensor, targets: Tensor) -> dict[str, float]:
    """The three retrieval metrics in Python floats, equal similarities ranked by index."""
    rows, labels = embeddings.double().tolist(), targets.tolist()
    sums = {"precision_at_1": 0.0, "r_precision": 0.0, "map_at_r": 0.0}
    queries = 0
    for i, z_i in enumerate(rows):
        relevant = labels.count(labels[i]) - 1
        if relevant == 0:
            continue
        queries += 1
        norm_i = math.sqrt(math.fsum(a * a for a in z_i))
        keys = []
        for j, z_j in enumerate(rows):
            norm_j = math.sqrt(math.fsum(b * b for b in z_j))
            cosine = math.fsum(a * b for a, b in zip(z_i, z_j)) / (norm_i * norm_j or 1.0)
            keys.append((-cosine, j))
        hits = [labels[j] == labels[i] for _, j in sorted(keys) if j != i][:relevant]
        sums["precision_at_1"] += hits[0]
        sums["r_precision"] += sum(hits) / relevant
        precisions = [sum(hits[: r + 1]) / (r + 1) for r, hit in enumerate(hits) if hit]
        sums["map_at_r"] += math.fsum(precisions) / relevant
    return {key: value / queries for key, value in sums.items()}


def _random(num_samples: int, num_classes: int, seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # float32-representable values, so that both sides see the same numbers.
    embeddings = torch.randn(num_samples, 8, generator=generator).double()
    targets = torch.randint(0, num_classes, (num_samples,), generator=generator)
    return embeddings, targets


def _clustered(num_samples: int, num_classes: int, seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = 0.6 * torch.randn(num_classes, 16, generator=generator)
    targets = torch.randint(0, num_classes, (num_samples,), generator=generator)
    noise = torch.randn(num_samples, 16, generator=generator)
    return (centres[targets] + noise).double(), targets


SETS = {
    "random": lambda: _random(150, 6, seed=0),
    "random_many_classes": lambda: _random(120, 30, seed=1),  # lone queries included
    "clustered": lambda: _clustered(160, 8, seed=2),
}


@DTYPES
@pytest.mark.parametrize("chunk_size", [None, 7], ids=["one_block", "chunk7"])
@pytest.mark.parametrize("name", list(SETS))
def test_matches_accuracy_calculator(name: str, chunk_size: int | None, dtype: torch.dtype) -> None:
    embeddings, targets = SETS[name]()
    num_classes = int(targets.max()) + 1
    result = pairwise_retrieval(embeddings.to(dtype), targets, num_classes, (1, 5), chunk_size)
    assert set(result) == set(retrieval_keys((1, 5)))
    expected = accuracy_calculator(embeddings, targets)
    for key, value in expected.items():
        assert 0.0 < value < 1.0, key  # not a degenerate set
        assert result[key].dtype == dtype
        assert float(result[key]) == pytest.approx(value, abs=1e-6), key
    for k in (1, 5):
        knn = brute_force_knn(embeddings, targets, k)
        assert float(result[f"knn{k}_acc"]) == pytest.approx(knn, abs=1e-6), k


def test_hand_built_ranking() -> None:
    # On the unit circle: class A at 0°, 10°, 30° and a lone class B at 25°.
    # a0: a1, b0 | a2  -> hits 1, 0 within R = 2: R-precision 1/2, MAP@R 1/2, P@1 1
    # a1: a0, b0 | a2  -> 1/2, 1/2, 1
    # a2: b0, a1 | a0  -> 1/2, (1/2)(1/2) = 1/4, 0
    angles = torch.tensor([0.0, 10.0, 30.0, 25.0], dtype=torch.float64).deg2rad()
    embeddings = torch.stack([angles.cos(), angles.sin()], dim=1)
    targets = torch.tensor([0, 0, 0, 1])
    result = pairwise_retrieval(embeddings, targets, 2, knn_k=(1, 2, 3))
    expected = {
        "precision_at_1": 2 / 3,
        "r_precision": 1 / 2,
        "map_at_r": 5 / 12,
        "knn1_acc": 2 / 4,  # a0, a1 right; a2 -> b0, b0 -> a2 wrong
        "knn2_acc": 2 / 4,  # a2: one vote each, b0 nearer -> B (wrong); b0 -> A (wrong)
        "knn3_acc": 3 / 4,  # a2 gets A by 2 votes to 1; b0 still wrong
    }
    for key, value in expected.items():
        assert float(result[key]) == pytest.approx(value, abs=1e-12), key
    reference = accuracy_calculator(embeddings, targets)
    for key in PML_NAMES:
        assert reference[key] == pytest.approx(expected[key], abs=1e-6)


def test_equal_similarities_are_ranked_by_index() -> None:
    # Identical embeddings: every similarity ties. Query 0 ranks 1 before 2 (a miss), query 2
    # ranks 0 first (a hit); query 1 is alone in its class and not a retrieval query.
    result = pairwise_retrieval(torch.ones(3, 4), torch.tensor([0, 1, 0]), 2, knn_k=(1,))
    assert float(result["precision_at_1"]) == 0.5
    assert float(result["map_at_r"]) == 0.5
    assert float(result["knn1_acc"]) == pytest.approx(1 / 3)  # query 1 gets class 0


@pytest.mark.parametrize("chunk_size", [None, 4], ids=["one_block", "chunk4"])
def test_ties_across_the_ranking_depth_follow_the_index(chunk_size: int | None) -> None:
    # 4 distinct directions, each repeated 6 times with mixed labels: most similarities tie,
    # also at the depth the ranking is cut (R = 7 of 23 references).
    generator = torch.Generator().manual_seed(4)
    directions = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    embeddings = directions.repeat_interleave(6, dim=0)
    targets = torch.randperm(24, generator=generator) % 3
    result = pairwise_retrieval(embeddings, targets, 3, (1,), chunk_size)
    expected = brute_force_retrieval(embeddings, targets)
    for key, value in expected.items():
        assert float(result[key]) == pytest.approx(value, abs=1e-12), key
    random_set = SETS["random"]()
    for key, value in brute_force_retrieval(*random_set).items():
        assert float(pairwise_retrieval(*random_set, 6)[key]) == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize(
    ("embeddings", "targets"),
    [
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)),
        (torch.ones(1, 4), torch.tensor([0])),
        (torch.eye(3, 4), torch.tensor([0, 1, 2])),  # all lone: AccuracyCalculator gives NaN
    ],
    ids=["empty", "one_sample", "all_lone"],
)
def test_undefined_values_are_zero(embeddings: Tensor, targets: Tensor) -> None:
    result = pairwise_retrieval(embeddings, targets, 3, knn_k=(1, 5))
    for key in ("precision_at_1", "r_precision", "map_at_r", "knn1_acc"):
        assert float(result[key]) == 0.0, key


def test_k_larger_than_the_set_uses_all_references() -> None:
    embeddings, targets = _random(12, 2, seed=3)
    result = pairwise_retrieval(embeddings, targets, 2, knn_k=(50,))
    expected = brute_force_knn(embeddings, targets, 11)
    assert float(result["knn50_acc"]) == pytest.approx(expected, abs=1e-12)


def test_metric_updates_merge_and_reset() -> None:
    embeddings, targets = SETS["clustered"]()
    expected = accuracy_calculator(embeddings, targets)
    metric, other = EmbeddingRetrieval(8, knn_k=(3,), chunk_size=5), EmbeddingRetrieval(8)
    for batch in range(0, 100, 9):
        metric.update(embeddings[batch : min(batch + 9, 100)], targets[batch : min(batch + 9, 100)])
    other.update(embeddings[100:], targets[100:])
    metric.merge_state(other)
    result = metric.compute()
    for key, value in expected.items():
        assert float(result[key]) == pytest.approx(value, abs=1e-6), key
    assert float(result["knn3_acc"]) == pytest.approx(
        brute_force_knn(embeddings, targets, 3), abs=1e-6
    )
    metric.reset()
    metric.update(embeddings[:40], targets[:40])
    expected = accuracy_calculator(embeddings[:40], targets[:40])
    assert float(metric.compute()["map_at_r"]) == pytest.approx(expected["map_at_r"], abs=1e-6)


def _ddp_worker(rank: int, world_size: int, expected: dict[str, float]) -> None:
    embeddings, targets = SETS["clustered"]()
    split = 70  # uneven halves exercise the gather of unequal sizes
    part = slice(0, split) if rank == 0 else slice(split, None)
    metric = EmbeddingRetrieval(8, knn_k=(1, 5))
    for batch in torch.split(torch.arange(len(targets))[part], 16):
        metric.update(embeddings[batch], targets[batch])
    result = metric.compute()
    for key, value in expected.items():
        assert float(result[key]) == pytest.approx(value, abs=1e-6), (rank, key)


def test_two_processes_match_accuracy_calculator() -> None:
    embeddings, targets = SETS["clustered"]()
    expected = accuracy_calculator(embeddings, targets)
    expected |= {f"knn{k}_acc": brute_force_knn(embeddings, targets, k) for k in (1, 5)}
    run_ranks(_ddp_worker, (expected,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_accuracy_calculator() -> None:
    embeddings, targets = SETS["clustered"]()
    result = pairwise_retrieval(embeddings.cuda(), targets.cuda(), 8, (1,), chunk_size=32)
    for key, value in accuracy_calculator(embeddings, targets).items():
        assert result[key].device.type == "cuda"
        assert float(result[key]) == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"knn_k": 5}, "`knn_k` to be a sequence of positive ints, got 5"),
        ({"knn_k": (0,)}, "`knn_k` to be a positive int, got 0"),
        ({"knn_k": (5, 5)}, r"`knn_k` to hold distinct values, got \[5, 5\]"),
        ({"chunk_size": 0}, "`chunk_size` to be a positive int, got 0"),
        ({"num_classes": 0}, "`num_classes` to be a positive int, got 0"),
        ({"targets": torch.tensor([0, 1, 3, 1])}, r"\[0, 2\], got values in \[0, 3\]"),
        ({"embeddings": torch.ones(4)}, r"`embeddings` to have shape \[N, D\]"),
    ],
    ids=["k_int", "k_zero", "k_repeated", "chunk_zero", "classes_zero", "targets", "shape"],
)
def test_user_errors(kwargs: dict, match: str) -> None:
    arguments = {
        "embeddings": torch.ones(4, 2),
        "targets": torch.tensor([0, 1, 2, 1]),
        "num_classes": 3,
        "knn_k": (5,),
        "chunk_size": None,
    } | kwargs
    with pytest.raises(ValueError, match=match):
        pairwise_retrieval(**arguments)
    with pytest.raises(ValueError, match=match):
        metric = EmbeddingRetrieval(
            arguments["num_classes"], knn_k=arguments["knn_k"], chunk_size=arguments["chunk_size"]
        )
        metric.update(arguments["embeddings"], arguments["targets"])
