"""Feature extraction throughput: cold (decode + fbank), warm (FeatureCache) and transformers.

Generates ``--clips`` noisy-tone clips of ``--seconds`` seconds (16-bit wav at ``--file-rate``,
resampled to 16 kHz on reading) in a temporary folder, then measures clips per second of:

- cold: ``load_audio`` + ``compute_fbank`` (what every epoch costs without a cache),
- fbank only: ``compute_fbank`` on waveforms already in memory,
- cache build: a ``FeatureCache`` built from scratch (cold extraction + writing the memmap),
- warm: a fresh ``FeatureCache`` on the built files (key check, then one memmap row per clip),
- warm item: ``ClipDataset[i]`` from the cache (memmap row + normalisation, evaluation mode),
- AST + decode: ``soundfile.read`` (+ torchaudio resampling if needed) + transformers'
  ``ASTFeatureExtractor`` (normalised output),
- AST: ``ASTFeatureExtractor`` on waveforms already in memory.

Run: ``.venv/bin/python benchmarks/bench_data.py --clips 200 --seconds 5``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
import torch
from torchaudio.functional import resample

from add_lightning.data.audio import load_audio
from add_lightning.data.cache import FeatureCache
from add_lightning.data.clip_dataset import Clip, ClipDataset
from add_lightning.data.fbank import FbankOptions, compute_fbank
from add_lightning.data.normalization import AUDIOSET_NORMALIZATION

RATE = 16000


def _write_clips(folder: Path, count: int, seconds: float, rate: int) -> list[Path]:
    rng = np.random.default_rng(0)
    t = np.arange(int(rate * seconds)) / rate
    paths = []
    for i in range(count):
        wave = 0.3 * np.sin(2 * np.pi * (200 + 10 * i) * t) + 0.05 * rng.standard_normal(t.size)
        path = folder / f"clip{i:05d}.wav"
        soundfile.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
        paths.append(path)
    return paths


def _rates(count: int, runs: dict[str, Callable[[], None]], repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` clips per second of each run, interleaved so load changes hit all."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: count / seconds for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--target-frames", type=int, default=None, help="default: 128 for <= 1 s, else 512"
    )
    parser.add_argument(
        "--file-rate", type=int, default=RATE, help="rate of the generated files (ESC-50: 44100)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()

    from transformers import ASTFeatureExtractor

    torch.set_num_threads(args.threads)
    target_frames = args.target_frames or (128 if args.seconds <= 1 else 512)
    options = FbankOptions(target_frames=target_frames)
    extractor = ASTFeatureExtractor(max_length=target_frames)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = _write_clips(folder, args.clips, args.seconds, args.file_rate)
        waveforms = [load_audio(p) for p in paths]
        arrays = [w.numpy() for w in waveforms]
        n = len(paths)

        def cold() -> None:
            for path in paths:
                compute_fbank(load_audio(path), options)

        def fbank_only() -> None:
            for waveform in waveforms:
                compute_fbank(waveform, options)

        def build() -> None:
            FeatureCache(folder / "cache", paths, options, progress=False).build(force=True)

        def warm() -> None:
            cache = FeatureCache(folder / "cache", paths, options, progress=False)
            for path in paths:
                cache.features(path)

        clips = [Clip(path=p, label=0, clip_id=p.stem) for p in paths]
        cache = FeatureCache(folder / "cache", paths, options, progress=False)
        dataset = ClipDataset(clips, 1, options, AUDIOSET_NORMALIZATION, cache=cache)

        def warm_item() -> None:
            for i in range(n):
                dataset[i]

        def ast_decode() -> None:
            for path in paths:
                wave, file_rate = soundfile.read(path, dtype="float32")
                if file_rate != RATE:  # the extractor takes 16 kHz only
                    wave = resample(torch.from_numpy(wave), file_rate, RATE).numpy()
                extractor(wave, sampling_rate=RATE, return_tensors="pt")

        def ast() -> None:
            for array in arrays:
                extractor(array, sampling_rate=RATE, return_tensors="pt")

        runs = {
            "cold (load_audio + compute_fbank)": cold,
            "fbank only (compute_fbank)": fbank_only,
            "cache build (cold + memmap write)": build,
            "warm (FeatureCache)": warm,
            "warm item (ClipDataset + cache)": warm_item,
            "AST + decode (soundfile + ASTFeatureExtractor)": ast_decode,
            "AST (ASTFeatureExtractor)": ast,
        }
        results = _rates(n, runs, args.repeat)

    header = (
        f"{n} clips x {args.seconds} s, files at {args.file_rate} Hz, "
        f"target_frames={target_frames}, "
        f"torch threads={torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, best of {args.repeat}"
    )
    print(header)
    for name, rate in results.items():
        print(f"  {name:<48} {rate:10.1f} clips/s")
    cold_rate = results["cold (load_audio + compute_fbank)"]
    print(f"  warm / cold: {results['warm (FeatureCache)'] / cold_rate:.1f}x")
    print(
        "  cold / (AST + decode): "
        f"{cold_rate / results['AST + decode (soundfile + ASTFeatureExtractor)']:.2f}x"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"setup": header, "clips_per_s": results}, indent=2))


if __name__ == "__main__":
    main()
