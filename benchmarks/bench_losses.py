"""Cost of ADDLoss forward+backward relative to the normalised Gram matrix alone.

The Gram matrix ``Z Z^T`` of the normalised embeddings (forward and backward) is the floor of
any loss on all pairs; the issue's target is ADDLoss <= 1.5x that floor at B=1024, D=768,
50 classes, float32, CPU. A boolean-mask-indexing implementation (``distance[mask].mean()``,
``.std()``, the shape of most research code) is timed alongside.

Usage: python benchmarks/bench_losses.py [--batch-sizes 32 256 1024 4096] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from add_lightning.losses import ADDLoss


def gram_floor(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    z = F.normalize(x, dim=1)
    return (z @ z.T).sum()


def boolean_indexing(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    z = F.normalize(x, dim=1)
    distance = 1.0 - z @ z.T
    same = targets[:, None] == targets[None, :]
    eye = torch.eye(len(targets), dtype=torch.bool, device=x.device)
    positive = distance[same & ~eye].pow(2)
    negative = (1.0 - distance[~same]).pow(2)
    return positive.mean() + positive.std() + negative.mean() + negative.std()


def best_seconds(fns: dict, x, targets, repeats: int, device: torch.device) -> dict:
    """Best time of forward+backward per function, interleaved so load affects all alike."""

    def step(fn) -> float:
        x.grad = None
        start = time.perf_counter()
        fn(x, targets).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for fn in fns.values():
        step(fn)
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], step(fn))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256, 1024, 4096])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    add = ADDLoss()
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {device}, D={args.dim}, "
        f"{args.classes} classes, float32, best of {args.repeats}"
    )
    print(
        "| B | Gram floor (ms) | ADDLoss (ms) | ADD / floor | boolean indexing (ms) | "
        "indexing / floor |"
    )
    print("|---|---|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    for batch in args.batch_sizes:
        x = torch.randn(batch, args.dim, generator=generator).to(device).requires_grad_()
        targets = torch.randint(args.classes, (batch,), generator=generator).to(device)
        repeats = max(3, args.repeats if batch <= 1024 else args.repeats // 3)
        best = best_seconds(
            {"floor": gram_floor, "add": add, "indexing": boolean_indexing},
            x,
            targets,
            repeats,
            device,
        )
        floor, ours, indexing = best["floor"], best["add"], best["indexing"]
        print(
            f"| {batch} | {floor * 1e3:.2f} | {ours * 1e3:.2f} | {ours / floor:.2f} | "
            f"{indexing * 1e3:.2f} | {indexing / floor:.2f} |"
        )


if __name__ == "__main__":
    main()
