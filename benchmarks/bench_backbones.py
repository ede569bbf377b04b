"""Throughput of the BEATs, AST and speech SSL (wav2vec 2.0, HuBERT, WavLM, Whisper) base backbones.

All are randomly initialised (no download): BEATs with the architecture of the released
`BEATs_iter3*` checkpoints (12 layers, width 768, 12 heads, FFN 3072, DeepNorm, gated relative
position bias), AST as transformers' `ASTModel` with `ASTConfig` defaults except `max_length`,
set to the input length. Both see the same [batch, frames, 128] normalised fbank: at 512
frames BEATs has 32 × 8 = 256 patch tokens (16×16, no overlap), AST 2 + 50 × 12 = 602 (stride 10).
The speech encoders are `HFAudioEncoder`s of transformers' default (base) configs of wav2vec2,
HuBERT and WavLM, and Whisper base's encoder (6 layers, width 512), on the waveform of the same
duration (frames × 10 ms at 16 kHz): 20 ms frames for the first three; Whisper always encodes
its fixed 30 s (1500 frames), log-mel computed by its feature extractor inside the step.

Columns: parameters, forward GFLOP per clip (FlopCounterMode), and clips per second for a
no-grad forward and for forward + backward, best and median step over interleaved repetitions.

Recorded (2 shared CPU cores, load average 6-10 from other jobs, so medians are noisy; batch
2, 512 frames = 5.12 s, float32, 2 iterations; clips/s):

    backbone      params (M)  GFLOP  fwd best  fwd median  fwd+bwd best  fwd+bwd median
    BEATs-base          90.3   46.2      1.05        0.57          0.15            0.09
    AST-base            85.7  102.5      0.57        0.24          0.14            0.06
    wav2vec2-base       94.4   73.5      0.24        0.18          0.10            0.09
    HuBERT-base         94.4   73.5      0.53        0.45          0.23            0.14
    WavLM-base+         94.4   73.5      0.76        0.32          0.66            0.14
    Whisper-base        20.6   59.8      0.89        0.73          0.23            0.19

(wav2vec2, HuBERT and WavLM base share one architecture and FLOP count: their spread is the
load. Whisper's parameters are its encoder's; its GFLOP are those of the fixed 30 s input.)

Usage:
    python benchmarks/bench_backbones.py                      # CPU, batch 2, 2 threads
    python benchmarks/bench_backbones.py --device cuda --batch-size 16 --iterations 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import ASTConfig, ASTModel

from add_lightning.models.backbones.beats import BEATsBackbone
from add_lightning.models.backbones.hf_audio import HFAudioEncoder

# transformers' config defaults are the base models; Whisper base's encoder set explicitly
SPEECH_ENCODERS = {
    "wav2vec2-base": {"model_type": "wav2vec2"},
    "HuBERT-base": {"model_type": "hubert"},
    "WavLM-base+": {"model_type": "wavlm"},
    "Whisper-base": {
        "model_type": "whisper",
        "d_model": 512,
        "encoder_layers": 6,
        "encoder_attention_heads": 8,
        "encoder_ffn_dim": 2048,
        "decoder_layers": 1,
        "decoder_attention_heads": 8,
        "num_mel_bins": 80,
    },
}
DROPOUT_OFF = {"layerdrop": 0.0, "mask_time_prob": 0.0}

BEATS_ITER3_ARCHITECTURE = {
    "input_patch_size": 16,
    "embed_dim": 512,
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "deep_norm": True,
    "relative_position_embedding": True,
    "num_buckets": 320,
    "max_distance": 800,
    "gru_rel_pos": True,
    "layer_wise_gradient_decay_ratio": 0.6,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "encoder_layerdrop": 0.0,
}


class ASTMeanTokens(nn.Module):
    """ASTModel whose embedding is the mean of the CLS and distillation tokens."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.model = ASTModel(ASTConfig(max_length=frames))

    def forward(self, features: Tensor) -> Tensor:
        return self.model(features).last_hidden_state[:, :2].mean(dim=1)


def step_seconds(model: nn.Module, features: Tensor, backward: bool) -> float:
    """Wall time of one forward (no grad) or forward + backward step."""
    cuda = features.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    if backward:
        model.zero_grad(set_to_none=True)
        model(features).square().mean().backward()
    else:
        with torch.no_grad():
            model(features)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def forward_gflops_per_clip(model: nn.Module, features: Tensor) -> float:
    """Forward GFLOP of one clip as torch's FlopCounterMode counts them.

    Matrix products and convolutions only; on CPU the fused attention kernel is not counted
    (the attention score and value products add 4 · N² · D per layer for N tokens).
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(features[:1])
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    fbank = torch.randn(args.batch_size, args.frames, 128, device=device)
    waveform = 0.1 * torch.randn(args.batch_size, args.frames * 160, device=device)
    models = {
        "BEATs-base": BEATsBackbone(**BEATS_ITER3_ARCHITECTURE).to(device).train(),
        "AST-base": ASTMeanTokens(args.frames).to(device).train(),
    }
    inputs = dict.fromkeys(models, fbank)
    for name, config in SPEECH_ENCODERS.items():
        extra = {} if config["model_type"] == "whisper" else DROPOUT_OFF
        models[name] = HFAudioEncoder(config={**config, **extra}).to(device).train()
        inputs[name] = waveform
    # Repetitions interleave the models, so a burst of load on a shared machine hits both; the
    # best step is the least disturbed one, the median shows the spread.
    times: dict[tuple[str, bool], list[float]] = {}
    with autocast:
        for repetition in range(args.warmup + args.iterations):
            for name, model in models.items():
                for backward in (False, True):
                    seconds = step_seconds(model, inputs[name], backward)
                    if repetition >= args.warmup:
                        times.setdefault((name, backward), []).append(seconds)

    print(
        f"device={device} batch={args.batch_size} frames={args.frames} threads={args.threads} "
        f"dtype={args.dtype} iterations={args.iterations} (torch {torch.__version__})"
    )
    print(
        f"{'backbone':<13} {'params (M)':>10} {'GFLOP':>6} {'fwd best':>9} {'fwd median':>11}",
        end="",
    )
    print(f" {'fwd+bwd best':>13} {'fwd+bwd median':>15}")
    for name, model in models.items():
        parameters = sum(p.numel() for p in model.parameters()) / 1e6
        gflops = forward_gflops_per_clip(model, inputs[name])
        row = f"{name:<13} {parameters:>10.1f} {gflops:>6.1f}"
        for backward, widths in ((False, (9, 11)), (True, (13, 15))):
            seconds = times[(name, backward)]
            best = args.batch_size / min(seconds)
            median = args.batch_size / statistics.median(seconds)
            row += f" {best:>{widths[0]}.2f} {median:>{widths[1]}.2f}"
        print(row)


if __name__ == "__main__":
    main()
