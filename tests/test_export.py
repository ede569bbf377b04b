"""Export to transformers (ASTForAudioClassification + pipeline) and to ONNX (onnxruntime)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from console_runs import console_output
from test_backbone_beats import TINY as TINY_BEATS
from tiny_runs import synthetic_dataset, tiny_ast, tiny_run_config

from add_lightning.cli import console_main, main
from add_lightning.data.audio import load_audio
from add_lightning.data.fbank import FbankOptions, compute_fbank
from add_lightning.data.normalization import BEATS_NORMALIZATION, Normalization
from add_lightning.data.pipeline import FbankPipeline
from add_lightning.export import (
    ONNX_METADATA_KEY,
    export_huggingface,
    export_onnx,
)
from add_lightning.inference import TrainedModel
from add_lightning.models import ASTBackbone, AudioClassifier
from add_lightning.models.backbones import Backbone
from add_lightning.models.backbones.beats import BEATsBackbone

CLASSES = ["bark", "chirp", "rain"]
FEATURES = FbankOptions(num_mel_bins=32, target_frames=48)
NORMALIZATION = Normalization(-5.0, 3.0)
TINY_AST = tiny_ast(48, 32, num_hidden_layers=2, patch_size=8, frequency_stride=6, time_stride=8)


def _trained(backbone, features=FEATURES, normalization=NORMALIZATION, seed=0):
    """A classifier whose every weight (layer norms included) is perturbed from its init."""
    torch.manual_seed(seed)
    model = AudioClassifier(backbone, num_classes=len(CLASSES), class_names=CLASSES)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return TrainedModel(model.eval(), FbankPipeline(features, normalization, CLASSES))


def _ast(**overrides) -> ASTBackbone:
    return ASTBackbone(**{**TINY_AST, **overrides})


def _beats() -> BEATsBackbone:
    return BEATsBackbone(**TINY_BEATS)


def _write_clips(folder: Path) -> list[Path]:
    """Noise bursts and tones at several rates and channel counts, at most 48 frames long."""
    generator = np.random.default_rng(0)
    folder.mkdir()
    clips = []
    for index, (rate, channels, seconds) in enumerate(
        [(16000, 1, 0.49), (22050, 2, 0.3), (44100, 1, 0.45), (8000, 1, 0.2)]
    ):
        time = np.arange(int(rate * seconds)) / rate
        tone = 0.3 * np.sin(2 * np.pi * (300 + 400 * index) * time)
        noise = 0.05 * generator.standard_normal((time.size, channels))
        path = folder / f"clip{index}.wav"
        soundfile.write(path, (tone[:, None] + noise).astype(np.float32), rate, subtype="FLOAT")
        clips.append(path)
    return clips


@torch.no_grad()
def _our_probabilities(trained: TrainedModel, path: Path) -> np.ndarray:
    """Reference: our own file -> fbank -> normalisation -> model pipeline."""
    pipeline = trained.pipeline
    waveform = load_audio(path, pipeline.features.sample_rate)
    features = pipeline.normalization.apply(compute_fbank(waveform, pipeline.features))
    return trained.model(features[None]).softmax(-1)[0].double().numpy()


def _pipeline_probabilities(
    directory: Path, path: Path, class_names: list[str] = CLASSES
) -> np.ndarray:
    """The transformers pipeline on the file's samples (mono as it requires; it resamples)."""
    from transformers import pipeline

    classifier = pipeline("audio-classification", model=str(directory), device="cpu")
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    scores = classifier({"raw": samples.mean(axis=1), "sampling_rate": rate}, top_k=None)
    by_label = {score["label"]: score["score"] for score in scores}
    return np.array([by_label[name] for name in class_names])


def test_huggingface_pipeline_gives_our_probabilities(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trained = _trained(_ast())
    directory = export_huggingface(trained, tmp_path / "hf")
    config = json.loads((directory / "config.json").read_text())
    assert config["id2label"] == {"0": "bark", "1": "chirp", "2": "rain"}
    assert config["label2id"] == {"bark": 0, "chirp": 1, "rain": 2}
    preprocessor = json.loads((directory / "preprocessor_config.json").read_text())
    assert preprocessor["feature_extractor_type"] == "ASTFeatureExtractor"
    assert (preprocessor["mean"], preprocessor["std"]) == (-5.0, 3.0)
    assert (preprocessor["max_length"], preprocessor["num_mel_bins"]) == (48, 32)
    assert preprocessor["sampling_rate"] == 16000
    for path in _write_clips(tmp_path / "clips"):
        expected = _our_probabilities(trained, path)
        assert expected.max() < 0.99  # not saturated: the comparison is informative
        actual = _pipeline_probabilities(directory, path)
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4, err_msg=str(path))
        # and what `classify` reports for the file (all channels, its own rate)
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
        classified = trained.classify(torch.from_numpy(samples.T.copy()), rate)
        assert classified.num_windows == 1
        np.testing.assert_allclose(actual, classified.probabilities, rtol=0, atol=1e-4)
    assert not list(tmp_path.glob(".hf.*"))  # no temporary directory left


@pytest.mark.parametrize("seed", [1, 2])
def test_huggingface_logits_equal_ours_in_float64(seed):
    # The head mapping on the same input features, in float64 where float32 rounding does not
    # hide a mapping error: the layer-norm trick's relative error bound is 5e-9.
    generator = torch.Generator().manual_seed(0)
    from add_lightning.export import _huggingface_model

    trained = _trained(_ast(), seed=seed)
    trained.model.double()
    exported = _huggingface_model(trained, trained.model.backbone).double()
    features = torch.randn(5, 48, 32, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        expected = trained.model(features)
        actual = exported(input_values=features).logits
    assert expected.std() > 0.1
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    ("backbone", "features", "normalization", "message"),
    [
        (_beats, FEATURES, NORMALIZATION, "BEATsBackbone"),
        (lambda: _ast(pooling="patch_mean"), FEATURES, NORMALIZATION, "patch_mean"),
        (_ast, replace(FEATURES, window_type="povey"), None, "window_type='povey'"),
        (_ast, replace(FEATURES, waveform_scale=32768.0), None, "waveform_scale=32768.0"),
        (_ast, replace(FEATURES, frame_shift_ms=12.0), None, "frame_shift_ms=12.0"),
        (_ast, replace(FEATURES, high_freq=-400.0), None, "high_freq=-400.0"),
        (_ast, FEATURES, BEATS_NORMALIZATION, "BEATs preset"),
    ],
    ids=["beats", "patch_mean", "povey", "scale", "shift", "high_freq", "beats_normalization"],
)
def test_huggingface_export_refuses_what_it_cannot_express(
    tmp_path, backbone, features, normalization, message
):
    trained = _trained(backbone(), features, normalization or NORMALIZATION)
    with pytest.raises(ValueError, match=message):
        export_huggingface(trained, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert not list(tmp_path.iterdir())


def test_huggingface_export_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty directory"):
        export_huggingface(_trained(_ast()), tmp_path / "hf")
    assert (tmp_path / "hf" / "notes.txt").read_text() == "mine"


class _MeanBackbone(Backbone):
    embedding_dim = 32

    def forward(self, features):
        return features.mean(dim=1)


def test_onnx_export_refuses_other_backbones_and_a_directory(tmp_path):
    with pytest.raises(ValueError, match=r"ASTBackbone or BEATsBackbone .* _MeanBackbone"):
        export_onnx(_trained(_MeanBackbone()), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="is a directory"):
        export_onnx(_trained(_ast()), tmp_path)
    assert not list(tmp_path.iterdir())


BEATS_FEATURES = FbankOptions(
    num_mel_bins=128, target_frames=64, window_type="povey", waveform_scale=32768.0
)


@pytest.mark.parametrize(
    ("backbone", "features", "normalization"),
    [
        (_ast, FEATURES, NORMALIZATION),
        (_beats, BEATS_FEATURES, BEATS_NORMALIZATION),
    ],
    ids=["ast", "beats"],
)
def test_onnxruntime_equals_pytorch(tmp_path, backbone, features, normalization):
    import onnxruntime

    trained = _trained(backbone(), features, normalization)
    path = export_onnx(trained, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["fbank"]
    assert [o.name for o in session.get_outputs()] == ["logits", "embeddings"]
    metadata = json.loads(session.get_modelmeta().custom_metadata_map[ONNX_METADATA_KEY])
    assert metadata["class_names"] == CLASSES
    assert metadata["normalization"]["mean"] == normalization.mean
    assert FbankOptions(**metadata["features"]) == features
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 3):
        # un-normalised fbank values around the normalisation's mean
        fbank = normalization.mean + normalization.std * torch.randn(
            batch, features.target_frames, features.num_mel_bins, generator=generator
        )
        logits, embeddings = session.run(None, {"fbank": fbank.numpy()})
        with torch.no_grad():
            expected_embeddings = trained.model.embed(normalization.apply(fbank))
            expected_logits = trained.model.head(expected_embeddings)
        assert logits.shape == (batch, len(CLASSES))
        np.testing.assert_allclose(logits, expected_logits.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(embeddings, expected_embeddings.numpy(), rtol=0, atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_onnx_metadata_describes_the_input_of_a_real_file(tmp_path):
    # The metadata alone (no add_lightning) is enough to compute the graph's input: Kaldi fbank
    # with the stored settings, padded to target_frames.
    import onnxruntime
    import torchaudio

    trained = _trained(_ast())
    session = onnxruntime.InferenceSession(str(export_onnx(trained, tmp_path / "m.onnx")))
    metadata = json.loads(session.get_modelmeta().custom_metadata_map[ONNX_METADATA_KEY])
    settings = metadata["features"]
    clip = _write_clips(tmp_path / "clips")[0]
    samples, rate = soundfile.read(clip, dtype="float32")
    assert rate == settings["sample_rate"]
    fbank = torchaudio.compliance.kaldi.fbank(
        torch.from_numpy(samples)[None] * settings["waveform_scale"],
        sample_frequency=rate,
        num_mel_bins=settings["num_mel_bins"],
        frame_length=settings["frame_length_ms"],
        frame_shift=settings["frame_shift_ms"],
        window_type=settings["window_type"],
        low_freq=settings["low_freq"],
        high_freq=settings["high_freq"],
        dither=0.0,
        htk_compat=True,
        use_energy=False,
    )
    padded = torch.nn.functional.pad(fbank, (0, 0, 0, settings["target_frames"] - len(fbank)))
    logits, _ = session.run(None, {"fbank": padded[None].numpy()})
    expected = _our_probabilities(trained, clip)
    np.testing.assert_allclose(torch.from_numpy(logits).softmax(-1)[0], expected, atol=1e-4)


def test_console_script_exports_a_fitted_checkpoint(tmp_path, capsys):
    import onnxruntime

    from add_lightning.inference import load_trained_model

    config = tmp_path / "fit.yaml"
    dataset = synthetic_dataset(tmp_path / "synthetic")
    config.write_text(tiny_run_config(dataset, tmp_path / "cache", lr=1e-2, max_epochs=2))
    assert main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)]) == 0
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    trained = load_trained_model(checkpoint)
    clips = sorted((tmp_path / "synthetic").rglob("*.wav"))[:2]

    hf = console_output(["export", "--ckpt_path", str(checkpoint), "--format", "hf", "--output",
                         str(tmp_path / "hf")])  # fmt: skip
    assert hf.returncode == 0, hf.stderr
    assert str(tmp_path / "hf") in hf.stdout
    for clip in clips:
        np.testing.assert_allclose(
            _pipeline_probabilities(tmp_path / "hf", clip, trained.class_names),
            _our_probabilities(trained, clip),
            atol=1e-4,
        )

    onnx_path = tmp_path / "model.onnx"
    assert console_main(["export", "--ckpt_path", str(checkpoint), "--format", "onnx",
                         "--output", str(onnx_path)]) == 0  # fmt: skip
    session = onnxruntime.InferenceSession(str(onnx_path))
    for clip in clips:
        fbank = compute_fbank(load_audio(clip), trained.pipeline.features)
        logits, _ = session.run(None, {"fbank": fbank[None].numpy()})
        probabilities = torch.from_numpy(logits).softmax(-1)[0].numpy()
        np.testing.assert_allclose(probabilities, _our_probabilities(trained, clip), atol=1e-4)

    capsys.readouterr()
    export = ["export", "--ckpt_path", str(checkpoint), "--output", str(tmp_path / "hf")]
    assert console_main([*export, "--format", "hf"]) == 1
    error = capsys.readouterr().err
    assert "not an empty directory" in error and "Traceback" not in error
    with pytest.raises(SystemExit):
        console_main([*export, "--format", "tflite"])
    assert "format" in capsys.readouterr().err


def test_onnx_beats_masks_the_padding_of_a_short_clip_as_classify(tmp_path):
    import onnxruntime

    trained = _trained(_beats(), BEATS_FEATURES, BEATS_NORMALIZATION)
    session = onnxruntime.InferenceSession(str(export_onnx(trained, tmp_path / "model.onnx")))
    generator = torch.Generator().manual_seed(3)
    frames = BEATS_NORMALIZATION.mean + BEATS_NORMALIZATION.std * torch.randn(
        2, BEATS_FEATURES.target_frames, BEATS_FEATURES.num_mel_bins, generator=generator
    )
    frames[0, 32:] = 0.0  # a 32-frame clip zero-padded to 64 beside a full one
    logits, embeddings = session.run(None, {"fbank": frames.numpy()})
    with torch.no_grad():
        alone = trained.model.embed(BEATS_NORMALIZATION.apply(frames[:1, :32]))
        full = trained.model.embed(BEATS_NORMALIZATION.apply(frames[1:]))
        unmasked = trained.model.embed(BEATS_NORMALIZATION.apply(frames[:1]))
        alone_logits = trained.model.head(alone)
    np.testing.assert_allclose(embeddings[0], alone[0].numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(embeddings[1], full[0].numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(logits[0], alone_logits[0].numpy(), rtol=0, atol=1e-4)
    assert np.abs(embeddings[0] - unmasked[0].numpy()).max() > 1e-2  # the mask mattered
