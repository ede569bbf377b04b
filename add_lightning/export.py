"""Export a trained model to a Hugging Face transformers directory or to an ONNX file.

:func:`export_huggingface` turns an AST model into an ``ASTForAudioClassification`` directory
with its ``ASTFeatureExtractor`` preprocessor config, so that
``transformers.pipeline("audio-classification", model=DIR)`` gives the model's probabilities.
The two architectures differ in one place, and the export maps it exactly:

- Pooling: transformers' pooler is the mean of the CLS and distillation tokens of the
  final-layer-normed sequence, our ``pooling="cls_dist"``. ``"patch_mean"`` has no
  counterpart and is refused.
- Head: ours is ``Linear(p)``, transformers' ``ASTMLPHead`` is ``Linear(LayerNorm(p))``, with
  ``p = (LN(h_cls) + LN(h_dist)) / 2`` and ``LN(h) = gamma * n(h) + beta`` the final layer norm
  (``n`` centres and scales to unit variance). ``u = (n(h_cls) + n(h_dist)) / 2`` has mean 0
  and variance at most 1. The export sets the final layer norm to ``c * n(h)`` (weight ``c``,
  bias 0) with ``c = 1e-4 * sqrt(eps)``, so the head's layer norm receives ``c * u``: its mean
  is 0 and its variance at most ``c**2 = 1e-8 * eps``, so it divides by ``sqrt(eps)`` up to a
  relative ``5e-9`` (below float32's resolution: in float32 the sum ``var + eps`` rounds to
  ``eps``). The head's layer norm gets weight ``gamma * sqrt(eps) / c`` and bias ``beta``, which
  gives back ``p``, and the dense layer our head's weights. Consequence: the exported model's
  ``last_hidden_state`` and ``pooler_output`` are ``c`` times the normalised states, not our
  embeddings (take embeddings from :func:`export_onnx` or ``classify``), and it must run in
  float32, bfloat16 or float64 (``c`` underflows in float16).

Feature settings that ``ASTFeatureExtractor`` cannot reproduce are refused: it calls Kaldi's
fbank with the hanning window, 25 ms frames every 10 ms, mel filters from 20 Hz to Nyquist and
the waveform as given (scale 1); it normalises with any mean/std.

:func:`export_onnx` (AST and BEATs) writes a graph from the **un-normalised** fbank
(``compute_fbank``'s output: Kaldi fbank zero-padded or cropped to ``target_frames``) to logits
and embeddings; the training normalisation ``(x - mean) / (2 * std)`` is inside the graph.
For a backbone that takes a padding mask (BEATs) the graph also finds each clip's zero padding,
the all-zero frames after its last frame with a non-zero value (a Kaldi log-mel frame is never
all zeros), and masks it as ``classify`` does. Input ``fbank [batch, T, F]``, outputs
``logits [batch, C]`` and ``embeddings [batch, D]``, the batch size dynamic. The pipeline's
settings are in the model's metadata (``metadata_props``, key ``add_lightning``, a JSON object:
features, normalisation, class names, input and outputs).

Both write under a temporary name and rename when complete. Waveform models (speech
encoders, ``HFAudioEncoder``) are not exported: both refuse them (score their files with
``add-lightning classify``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from add_lightning.atomic import atomic_directory, atomic_path
from add_lightning.data.normalization import BEATS_NORMALIZATION
from add_lightning.data.pipeline import FbankPipeline
from add_lightning.inference import TrainedModel
from add_lightning.models.backbones.ast import ASTBackbone
from add_lightning.models.backbones.beats import BEATsBackbone

__all__ = [
    "HEAD_SCALE",
    "ONNX_METADATA_KEY",
    "export_huggingface",
    "export_onnx",
    "main",
    "onnx_metadata",
]

#: ``c / sqrt(eps)`` of the head mapping in the module docstring.
HEAD_SCALE = 1e-4
#: Key of the pipeline's settings in the ONNX model's ``metadata_props``.
ONNX_METADATA_KEY = "add_lightning"

# What ASTFeatureExtractor passes to kaldi.fbank (its window) or leaves at kaldi.fbank's
# defaults; our other settings must have these values.
_EXTRACTOR_FIXED = {
    "window_type": "hanning",
    "frame_length_ms": 25.0,
    "frame_shift_ms": 10.0,
    "low_freq": 20.0,
    "high_freq": 0.0,
    "waveform_scale": 1.0,
}


def _check_fbank_model(trained: TrainedModel) -> None:
    """Refuses a waveform model (a speech encoder), which neither format supports."""
    if not isinstance(trained.pipeline, FbankPipeline):
        raise ValueError(
            "`add-lightning export` supports fbank models: AST (`--format hf` or `onnx`) and "
            f"BEATs (`--format onnx`); this is a waveform model "
            f"({type(trained.model.backbone).__name__}), which it does not export; use "
            "`add-lightning classify --ckpt_path ...` to score files with it."
        )


def _check_huggingface_exportable(trained: TrainedModel) -> ASTBackbone:
    _check_fbank_model(trained)
    backbone = trained.model.backbone
    if not isinstance(backbone, ASTBackbone):
        raise ValueError(
            "Expected an ASTBackbone model for `--format hf` (ASTForAudioClassification) but "
            f"got a {type(backbone).__name__}; export it with `--format onnx`."
        )
    if backbone.pooling != "cls_dist":
        raise ValueError(
            "ASTForAudioClassification pools the mean of the CLS and distillation tokens "
            f"(`pooling: cls_dist`); this model has `pooling: {backbone.pooling}`, which it "
            "cannot express; export it with `--format onnx`."
        )
    features = trained.pipeline.features
    different = [
        f"{name}={getattr(features, name)!r} (expected {value!r})"
        for name, value in _EXTRACTOR_FIXED.items()
        if getattr(features, name) != value
    ]
    if different:
        raise ValueError(
            "ASTFeatureExtractor cannot reproduce the model's features: it computes the Kaldi "
            "fbank with the hanning window, 25 ms frames every 10 ms, mel filters from 20 Hz to "
            f"Nyquist and an unscaled waveform, but the model was trained with "
            f"{', '.join(different)}; export it with `--format onnx`."
        )
    if trained.pipeline.normalization == BEATS_NORMALIZATION:
        raise ValueError(
            "The model's normalisation is the BEATs preset (mean 15.41663, std 6.55582), the "
            "statistics of fbanks of waveforms x 2**15, which ASTFeatureExtractor never "
            "computes; export it with `--format onnx`."
        )
    config = backbone.ast.config
    if (config.max_length, config.num_mel_bins) != (features.target_frames, features.num_mel_bins):
        raise ValueError(
            f"The AST input ({config.max_length} frames x {config.num_mel_bins} bins) differs "
            f"from the features ({features.target_frames} x {features.num_mel_bins}); the "
            "checkpoint is inconsistent."
        )
    return backbone


def _huggingface_model(trained: TrainedModel, backbone: ASTBackbone) -> nn.Module:
    """``ASTForAudioClassification`` with our weights and the exact head mapping."""
    from transformers import ASTForAudioClassification

    config = backbone.ast.config.__class__.from_dict(backbone.ast.config.to_dict())
    config.id2label = dict(enumerate(trained.class_names))
    config.label2id = {name: index for index, name in enumerate(trained.class_names)}
    config.architectures = ["ASTForAudioClassification"]
    exported = ASTForAudioClassification(config).eval()
    ast = exported.audio_spectrogram_transformer
    ast.load_state_dict(backbone.ast.state_dict())
    eps = config.layer_norm_eps
    scale = HEAD_SCALE * math.sqrt(eps)
    final_norm, head = backbone.ast.layernorm, trained.model.head
    with torch.no_grad():
        ast.layernorm.weight.fill_(scale)
        ast.layernorm.bias.zero_()
        exported.classifier.layernorm.weight.copy_(final_norm.weight * (math.sqrt(eps) / scale))
        exported.classifier.layernorm.bias.copy_(final_norm.bias)
        exported.classifier.dense.weight.copy_(head.weight)
        exported.classifier.dense.bias.copy_(head.bias)
    return exported


def _feature_extractor(trained: TrainedModel) -> Any:
    from transformers import ASTFeatureExtractor

    features = trained.pipeline.inference_features
    return ASTFeatureExtractor(
        sampling_rate=features.sample_rate,
        num_mel_bins=features.num_mel_bins,
        max_length=features.target_frames,
        padding_value=0.0,
        do_normalize=True,
        mean=trained.pipeline.normalization.mean,
        std=trained.pipeline.normalization.std,
    )


def export_huggingface(trained: TrainedModel, directory: str | os.PathLike[str]) -> Path:
    """Writes an AST model as a transformers ``ASTForAudioClassification`` directory.

    The directory holds ``config.json`` (with ``id2label``/``label2id`` from the class names),
    ``model.safetensors`` and ``preprocessor_config.json`` (``ASTFeatureExtractor`` with the
    training sample rate, mel bins, ``max_length = target_frames`` and the training mean/std).
    ``transformers.pipeline("audio-classification", model=directory)`` then gives the model's
    probabilities for clips of at most ``target_frames`` frames (the pipeline crops longer
    clips to their first ``target_frames`` frames). The head mapping and its limits are in the
    module docstring.

    Args:
        trained: The model and its feature pipeline.
        directory: The directory to create; it must not exist, or be empty.

    Returns:
        The directory.

    Raises:
        ValueError: If the model or its features cannot be expressed (not an AST, pooling
            other than ``cls_dist``, feature settings ``ASTFeatureExtractor`` lacks), or the
            directory exists and is not empty.
    """
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ValueError(
            f"Expected `--output` {directory} to be a new directory but it exists and is not an "
            "empty directory; remove it or choose another path."
        )
    backbone = _check_huggingface_exportable(trained)
    exported = _huggingface_model(trained, backbone)
    with atomic_directory(directory) as temporary:
        exported.save_pretrained(temporary)
        _feature_extractor(trained).save_pretrained(temporary)
        if directory.exists():
            directory.rmdir()
    return directory


class _OnnxGraph(nn.Module):
    """Normalisation + classifier: un-normalised fbank -> (logits, embeddings)."""

    def __init__(self, trained: TrainedModel) -> None:
        super().__init__()
        self.model = trained.model
        self.normalization = trained.pipeline.normalization

    def forward(self, fbank: Tensor) -> tuple[Tensor, Tensor]:
        num_frames = None
        if self.model.backbone.accepts_padding_mask:
            num_frames = padded_num_frames(fbank)
        embeddings = self.model.embed(self.normalization.apply(fbank), num_frames=num_frames)
        return self.model.head(embeddings), embeddings


def padded_num_frames(fbank: Tensor) -> Tensor:
    """Frames up to the last one with a non-zero value (at least 1): the zero padding follows.

    Shape:
        - fbank: ``[B, T, F]`` un-normalised
        - output: ``[B]`` int64
    """
    positions = torch.arange(1, fbank.shape[1] + 1, device=fbank.device)
    nonzero = (fbank != 0).any(dim=-1)
    return (nonzero.long() * positions).amax(dim=-1).clamp(min=1)


def onnx_metadata(trained: TrainedModel) -> dict[str, Any]:
    """The pipeline's settings that :func:`export_onnx` stores in the ONNX metadata."""
    features = trained.pipeline.inference_features
    return {
        "format_version": 1,
        "input": {
            "name": "fbank",
            "shape": ["batch", features.target_frames, features.num_mel_bins],
            "description": (
                "un-normalised Kaldi log-mel fbank (torchaudio.compliance.kaldi.fbank with "
                "htk_compat=True, use_energy=False and the settings in `features`, waveform "
                "multiplied by waveform_scale first), zero-padded at the end or cropped to "
                "target_frames; the graph normalises it (and, for BEATs, masks the all-zero "
                "frames at the end as padding)"
            ),
        },
        "outputs": {"logits": ["batch", len(trained.class_names)], "embeddings": ["batch", "D"]},
        "features": dataclasses.asdict(features),
        "normalization": {
            "mean": trained.pipeline.normalization.mean,
            "std": trained.pipeline.normalization.std,
            "formula": "(fbank - mean) / (2 * std)",
        },
        "class_names": list(trained.class_names),
        "backbone": type(trained.model.backbone).__name__,
    }


def export_onnx(trained: TrainedModel, path: str | os.PathLike[str]) -> Path:
    """Writes an AST or BEATs model as an ONNX file (``torch.onnx.export(dynamo=True)``).

    Graph: input ``fbank [batch, T, F]`` (un-normalised, see the module docstring), outputs
    ``logits [batch, C]`` and ``embeddings [batch, D]``; the batch size is dynamic. The
    settings needed to compute the input are in ``metadata_props["add_lightning"]``
    (:func:`onnx_metadata`), which onnxruntime shows as
    ``session.get_modelmeta().custom_metadata_map``.

    Args:
        trained: The model and its feature pipeline.
        path: The ``.onnx`` file to write (replaced if it exists).

    Returns:
        The file.

    Raises:
        ValueError: If the backbone is neither an AST nor a BEATs model (e.g. a waveform
            model).
        ImportError: If onnx or onnxscript is not installed (the ``export`` extra).
    """
    _check_fbank_model(trained)
    backbone = trained.model.backbone
    if not isinstance(backbone, (ASTBackbone, BEATsBackbone)):
        raise ValueError(
            "Expected an ASTBackbone or BEATsBackbone model for `--format onnx` but got a "
            f"{type(backbone).__name__}."
        )
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx.export(dynamo=True) needs it)
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs onnx and onnxscript ({error}); install them with "
            "`pip install 'add-lightning[export]'`."
        ) from error
    from torch.nn.attention import SDPBackend, sdpa_kernel

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"Expected `--output` {path} to be a file name but it is a directory.")
    features = trained.pipeline.features
    graph = _OnnxGraph(trained).eval()
    example = torch.zeros(2, features.target_frames, features.num_mel_bins)
    device = next(trained.model.parameters()).device
    # The math attention kernel: with the fused ones, torch.export records output strides that
    # its ONNX decomposition of attention does not produce (BEATs fails with "Cannot view a
    # tensor ..."); the exported graph is the same computation.
    # The exporter warns for every torchvision operator it cannot register when torchvision is
    # not installed; none of them is in these models.
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            program = torch.onnx.export(
                graph,
                (example.to(device),),
                input_names=["fbank"],
                output_names=["logits", "embeddings"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
                verbose=False,
            )
    finally:
        registry_log.setLevel(level)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(onnx_metadata(trained))
    with atomic_path(path) as temporary:
        onnx.save_model(proto, temporary)
    return path


def main(argv: Sequence[str]) -> int:
    """``add-lightning export --ckpt_path CKPT --format {hf,onnx} --output PATH``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="add-lightning export",
        description=(
            "Export a checkpoint written by `add-lightning fit`: `hf`, an AST model as a "
            "transformers ASTForAudioClassification directory with its ASTFeatureExtractor "
            "config; `onnx`, an AST or BEATs model as an ONNX file from the un-normalised "
            "fbank to logits and embeddings. Waveform models (speech encoders) are not "
            "exported."
        ),
    )
    parser.add_argument("--ckpt_path", type=str, required=True, help="the .ckpt file")
    parser.add_argument("--format", type=Literal["hf", "onnx"], required=True, help="hf or onnx")
    parser.add_argument(
        "--output", type=str, required=True, help="directory (hf) or .onnx file (onnx) to write"
    )
    arguments = parser.parse_args(list(argv[1:]))
    from add_lightning.inference import load_trained_model

    trained = load_trained_model(arguments.ckpt_path)
    export = export_huggingface if arguments.format == "hf" else export_onnx
    written = export(trained, arguments.output)
    sys.stdout.write(f"Wrote {written}\n")
    return 0
