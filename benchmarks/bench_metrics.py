"""Memory and time of `EmbeddingGeometry` on a large random evaluation set.

Feeds N random embeddings of dimension D with C balanced random classes to the metric in batches
(as a validation loop would), then runs `compute`, and reports wall times and the peak resident
memory of the process (VmHWM, which counts torch's allocations, unlike tracemalloc).

    python benchmarks/bench_metrics.py                      # N=100,000, D=768, C=50 on CPU
    python benchmarks/bench_metrics.py --num-samples 30000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from add_lightning.metrics import GEOMETRY_SCALAR_KEYS, EmbeddingGeometry


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux VmHWM; ru_maxrss elsewhere)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--num-classes", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    metric = EmbeddingGeometry(args.num_classes, chunk_size=args.chunk_size).to(device)
    rss_before = peak_rss_bytes()

    start = time.perf_counter()
    for first in range(0, args.num_samples, args.batch_size):
        size = min(args.batch_size, args.num_samples - first)
        embeddings = torch.randn(size, args.dim, generator=generator, device=device)
        targets = torch.arange(first, first + size, device=device) % args.num_classes
        metric.update(embeddings, targets)
    update_s = time.perf_counter() - start

    start = time.perf_counter()
    result = metric.compute()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    compute_s = time.perf_counter() - start

    report = {
        "num_samples": args.num_samples,
        "dim": args.dim,
        "num_classes": args.num_classes,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "update_s": round(update_s, 2),
        "compute_s": round(compute_s, 2),
        "peak_rss_gb": round(peak_rss_bytes() / 1e9, 3),
        "rss_after_imports_gb": round(rss_before / 1e9, 3),
        "state_gb": round(args.num_samples * args.dim * 4 / 1e9, 3),
    }
    if device.type == "cuda":
        report["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 3)
    report.update({key: round(float(result[key]), 6) for key in GEOMETRY_SCALAR_KEYS})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
