"""Valid-frame counts in batches and the padding mask they give BEATs (not AST)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from test_backbone_beats import TINY

from add_lightning.data import AudioDataModule, FbankOptions, FolderDataset
from add_lightning.inference import TrainedModel
from add_lightning.models import ASTBackbone, AudioClassifier, BEATsBackbone

TARGET_FRAMES, BINS, RATE = 64, 32, 16000
# Kaldi framing (25 ms window, 10 ms shift at 16 kHz): k frames need 400 + 160 (k - 1) samples.
FRAMES = {"a/short": 16, "a/mid": 32, "a/odd": 20, "a/long": 80, "b/x": 48, "b/y": 64, "b/z": 40}
TINY_BEATS = TINY  # the released architecture in miniature (DeepNorm, relative bias)


def _samples(frames: int) -> int:
    return 400 + 160 * (frames - 1)


@pytest.fixture(scope="module")
def audio_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    generator = np.random.default_rng(0)
    for clip_id, frames in FRAMES.items():
        path = root / f"{clip_id}.wav"
        path.parent.mkdir(exist_ok=True)
        waveform = 0.1 * generator.standard_normal(_samples(frames))
        soundfile.write(path, waveform.astype(np.float32), RATE)
    return root


def _beats_model() -> AudioClassifier:
    torch.manual_seed(0)
    return AudioClassifier(BEATsBackbone(**TINY_BEATS), num_classes=2).eval()


def _all_batches(root: Path, tmp_path: Path, cache_features: bool) -> dict[str, torch.Tensor]:
    module = AudioDataModule(
        FolderDataset(str(root)),
        fold=None,
        features=FbankOptions(num_mel_bins=BINS, target_frames=TARGET_FRAMES),
        batch_size=3,
        val_fraction=0.0,
        cache_dir=str(tmp_path / "cache"),
        cache_features=cache_features,
        predict_split="train",
    )
    module.prepare_data()
    module.setup("predict")
    features, num_frames, clip_ids = [], [], []
    for batch in module.predict_dataloader():
        features.append(batch["features"])
        num_frames.append(batch["num_frames"])
        clip_ids += batch["clip_id"]
    return {"features": torch.cat(features), "num_frames": torch.cat(num_frames), "ids": clip_ids}


@pytest.mark.parametrize("cache_features", [False, True], ids=["decoded", "cached"])
def test_batches_carry_valid_frames(audio_root, tmp_path, cache_features):
    batches = _all_batches(audio_root, tmp_path, cache_features)
    assert batches["num_frames"].dtype == torch.int64
    expected = [min(FRAMES[clip_id], TARGET_FRAMES) for clip_id in batches["ids"]]
    assert batches["num_frames"].tolist() == expected
    # frames from num_frames on are the normalised zero padding: one constant value
    for row, count in zip(batches["features"], expected):
        if count < TARGET_FRAMES:
            padding = row[count:]
            assert torch.all(padding == padding[0, 0])
            assert not torch.all(row[count - 1] == padding[0, 0])


@pytest.mark.parametrize("cache_features", [False, True], ids=["decoded", "cached"])
def test_beats_embeds_a_padded_clip_as_alone_through_the_data_pipeline(
    audio_root, tmp_path, cache_features
):
    batches = _all_batches(audio_root, tmp_path, cache_features)
    model = _beats_model()
    with torch.no_grad():
        masked = model.embed(batches["features"], num_frames=batches["num_frames"])
        unmasked = model.embed(batches["features"])
        checked = 0
        for row, count in enumerate(batches["num_frames"].tolist()):
            alone = model.embed(batches["features"][row : row + 1, :count])[0]
            if count % 16 == 0:  # BEATs' rule: a prefix of whole 16-frame patches
                torch.testing.assert_close(masked[row], alone, rtol=1e-5, atol=1e-5)
                checked += 1
            if count < TARGET_FRAMES - 16:  # the padding changes the unmasked embedding
                assert (unmasked[row] - alone).abs().max() > 1e-3
    assert checked == 5  # 16, 32, 48, 64 and the 80 cropped to 64


def test_short_clip_in_a_padded_batch_gets_its_own_embedding():
    model = _beats_model()
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(3, TARGET_FRAMES, BINS, generator=generator)
    num_frames = torch.tensor([16, 48, 64])
    features[0, 16:] = features[1, 48:] = -0.7  # padding values: ignored under the mask
    with torch.no_grad():
        batch = model.embed(features, num_frames=num_frames)
        logits = model(features, num_frames=num_frames)
        for row, count in enumerate(num_frames.tolist()):
            alone = model.embed(features[row : row + 1, :count])[0]
            torch.testing.assert_close(batch[row], alone, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(logits[row], model.head(alone), rtol=1e-5, atol=1e-5)
        predicted = model.predict_step({"features": features, "num_frames": num_frames}, 0)
    torch.testing.assert_close(predicted["embeddings"], batch)


def test_ast_keeps_the_recipe_without_mask():
    torch.manual_seed(0)
    ast = ASTBackbone(
        pretrained=None,
        max_length=TARGET_FRAMES,
        num_mel_bins=BINS,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        patch_size=16,
        frequency_stride=16,
        time_stride=16,
    )
    model = AudioClassifier(ast, num_classes=2).eval()
    features = torch.randn(2, TARGET_FRAMES, BINS)
    with torch.no_grad():
        torch.testing.assert_close(
            model.embed(features, num_frames=torch.tensor([16, 64])), ast(features), rtol=0, atol=0
        )


def test_classify_masks_the_padding_of_a_short_clip():
    features = FbankOptions(num_mel_bins=BINS, target_frames=TARGET_FRAMES)
    from add_lightning.data import FbankPipeline, Normalization

    normalization = Normalization(mean=-4.0, std=3.0)
    trained = TrainedModel(_beats_model(), FbankPipeline(features, normalization, ["a", "b"]))
    waveform = 0.1 * torch.randn(_samples(32), generator=torch.Generator().manual_seed(2))
    scores = trained.classify(waveform, RATE)
    windows = trained.windows(waveform, RATE)
    with torch.no_grad():
        alone = trained.model.embed(windows[:, :32])[0]
    assert scores.num_windows == 1
    torch.testing.assert_close(scores.embedding, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        scores.probabilities, trained.model.head(alone).softmax(-1), rtol=1e-5, atol=1e-6
    )
