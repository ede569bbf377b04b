"""HFAudioEncoder: tiny random wav2vec 2.0 / HuBERT / WavLM / Whisper encoders, no downloads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    AutoModel,
    Wav2Vec2FeatureExtractor,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from add_lightning.models import AudioClassifier, HFAudioEncoder
from add_lightning.models.backbones.hf_audio import normalize_waveforms

_WAVEFORM_TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "conv_dim": [16, 16],
    "conv_kernel": [10, 3],
    "conv_stride": [5, 2],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "feat_proj_dropout": 0.0,
    "layerdrop": 0.0,
    "mask_time_prob": 0.0,
}
TINY = {
    # base models: per-channel GroupNorm in the first convolution, post-LN transformer
    "wav2vec2": {"model_type": "wav2vec2", **_WAVEFORM_TINY},
    # large models: LayerNorm in every convolution, pre-LN transformer
    "wav2vec2_layer_norm": {
        "model_type": "wav2vec2",
        **_WAVEFORM_TINY,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
    },
    "hubert": {"model_type": "hubert", **_WAVEFORM_TINY},
    "wavlm": {
        "model_type": "wavlm",
        **_WAVEFORM_TINY,
        "num_buckets": 16,
        "max_bucket_distance": 20,
    },
    # 50 positions = 100 mel frames = a fixed 1 s input (real Whisper: 1500 = 30 s)
    "whisper": {
        "model_type": "whisper",
        "d_model": 32,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 37,
        "decoder_layers": 1,
        "decoder_attention_heads": 2,
        "decoder_ffn_dim": 37,
        "num_mel_bins": 80,
        "max_source_positions": 50,
        "dropout": 0.0,
    },
}
FAMILIES = list(TINY)


def _encoder(family: str, **kwargs) -> HFAudioEncoder:
    torch.manual_seed(0)
    return HFAudioEncoder(config=TINY[family], **kwargs).eval()


def _padded(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    waveforms = 0.1 * torch.randn(len(lengths), longest, generator=generator)
    padding_mask = torch.arange(longest) >= torch.tensor(lengths)[:, None]
    return waveforms.masked_fill(padding_mask, 0.0), padding_mask


@pytest.mark.parametrize("pooling", ["mean", "weighted"])
@pytest.mark.parametrize("family", FAMILIES)
def test_clip_in_a_padded_batch_is_embedded_as_alone(family, pooling):
    encoder = _encoder(family, pooling=pooling, normalize=True)
    if pooling == "weighted":  # not uniform, so that every layer's share matters
        encoder.layer_weights.data = torch.linspace(-1.0, 1.0, encoder.layer_weights.numel())
    lengths = [9000, 2500, 6001]
    waveforms, padding_mask = _padded(lengths)
    with torch.no_grad():
        batched = encoder(waveforms, padding_mask)
        alone = torch.cat([encoder(w[None, :n]) for w, n in zip(waveforms, lengths, strict=True)])
    assert batched.shape == (3, encoder.embedding_dim)
    assert torch.isfinite(batched).all()
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_padding_changes_an_unrestricted_group_norm():
    """The reference behaviour that the restricted GroupNorm corrects: transformers' own model
    with its attention mask still encodes a padded base-model clip differently."""
    encoder = _encoder("wav2vec2")
    model = AutoModel.from_config(encoder.model.config).eval()
    model.load_state_dict(encoder.model.state_dict())
    waveforms, padding_mask = _padded([9000, 2500])
    with torch.no_grad():
        padded = model(waveforms, attention_mask=(~padding_mask).long()).last_hidden_state
        alone = model(waveforms[1:, :2500]).last_hidden_state
    frames = alone.shape[1]
    assert (padded[1, :frames] - alone[0]).abs().max() > 1e-3


def test_waveform_normalization_equals_the_feature_extractor():
    lengths = [8000, 1234, 5000]
    clips = [
        np.random.default_rng(i).normal(0.2 * i, 0.1 + i, n).astype(np.float32)
        for i, n in enumerate(lengths)
    ]
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    expected = extractor(clips, sampling_rate=16000, padding=True, return_tensors="pt")
    padded = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(c) for c in clips], batch_first=True)
    ours = normalize_waveforms(padded, torch.tensor(lengths))
    torch.testing.assert_close(ours, expected["input_values"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["wavlm", "whisper", "whisper_full"])
def test_save_pretrained_directory_loads_offline(family, tmp_path):
    original = _encoder(family.removesuffix("_full"), normalize=False)
    if family == "whisper_full":  # as hub checkpoints: encoder and decoder
        fields = {k: v for k, v in TINY["whisper"].items() if k != "model_type"}
        full = WhisperModel(WhisperConfig(**fields))
        full.encoder.load_state_dict(original.model.state_dict())
        full.save_pretrained(tmp_path)
    else:  # HFAudioEncoder.model alone
        original.model.save_pretrained(tmp_path)
    if family.startswith("whisper"):
        WhisperFeatureExtractor(feature_size=80, chunk_length=1).save_pretrained(tmp_path)
    else:  # a checkpoint that declares no normalisation (as WavLM base models)
        Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(tmp_path)
    loaded = HFAudioEncoder(pretrained=str(tmp_path)).eval()
    assert loaded.normalize is False
    assert type(loaded.model) is type(original.model)
    waveforms, padding_mask = _padded([7000, 3000])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(waveforms, padding_mask), original(waveforms, padding_mask), atol=0, rtol=0
        )


# Feature extractor settings that differ from the family's defaults (Whisper: another FFT
# size; the 1 s input as the tiny config's 50 positions), so a rebuilt encoder must carry them.
_SAVED_EXTRACTOR = {
    "wav2vec2": lambda: Wav2Vec2FeatureExtractor(do_normalize=False),
    "whisper": lambda: WhisperFeatureExtractor(feature_size=80, chunk_length=1, n_fft=256),
}


@pytest.mark.parametrize("family", [*FAMILIES, "whisper_full"])
def test_checkpoint_init_args_rebuild_the_pretrained_encoder(family, tmp_path):
    name = family.removesuffix("_full")
    original = _encoder(name)
    if family == "whisper_full":  # as hub checkpoints: encoder and decoder
        fields = {k: v for k, v in TINY["whisper"].items() if k != "model_type"}
        full = WhisperModel(WhisperConfig(**fields))
        full.encoder.load_state_dict(original.model.state_dict())
        full.save_pretrained(tmp_path)
    else:
        original.model.save_pretrained(tmp_path)
    _SAVED_EXTRACTOR["whisper" if name == "whisper" else "wav2vec2"]().save_pretrained(tmp_path)
    pretrained = HFAudioEncoder(pretrained=str(tmp_path), pooling="weighted")
    assert pretrained.model.training  # as built from a config, not from_pretrained's eval mode
    pretrained.eval()
    pretrained.layer_weights.data = torch.linspace(-1.0, 1.0, pretrained.layer_weights.numel())
    init_args = pretrained.checkpoint_init_args()
    for path in tmp_path.iterdir():
        path.unlink()  # the source is gone: the arguments alone rebuild the encoder

    rebuilt = HFAudioEncoder(**init_args).eval()
    assert init_args["pretrained"] is None
    assert init_args["config"]["model_type"] == TINY[name]["model_type"]
    assert type(rebuilt.model) is type(pretrained.model)
    assert list(rebuilt.state_dict()) == list(pretrained.state_dict())
    rebuilt.load_state_dict(pretrained.state_dict(), strict=True)
    if name == "whisper":
        assert rebuilt.extractor.n_fft == 256 and rebuilt.extractor.chunk_length == 1
    else:
        assert rebuilt.normalize is False  # the saved do_normalize, not the default True
        assert isinstance(rebuilt._group_norm, type(pretrained._group_norm))
    waveforms, padding_mask = _padded([7000, 3000])
    with torch.no_grad():
        expected = pretrained(waveforms, padding_mask)
        torch.testing.assert_close(rebuilt(waveforms, padding_mask), expected, atol=0, rtol=0)
        # the saved settings matter: the defaults give another embedding (little for base
        # models, whose first GroupNorm undoes most of the normalisation)
        defaults = {
            k: v for k, v in init_args.items() if k not in ("normalize", "feature_extractor")
        }
        default = HFAudioEncoder(**defaults).eval()
        default.load_state_dict(pretrained.state_dict())
        assert (default(waveforms, padding_mask) - expected).abs().max() > 1e-5


def test_feature_extractor_settings_override_and_are_checked(tmp_path):
    _encoder("wavlm").model.save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(tmp_path)
    settings = {"do_normalize": True}
    assert HFAudioEncoder(pretrained=str(tmp_path)).normalize is False
    assert HFAudioEncoder(pretrained=str(tmp_path), feature_extractor=settings).normalize is True
    assert (
        HFAudioEncoder(config=TINY["wavlm"], feature_extractor={"do_normalize": False}).normalize
        is False
    )
    with pytest.raises(ValueError, match=r"WhisperFeatureExtractor has no setting 'hop'; expected"):
        HFAudioEncoder(config=TINY["whisper"], feature_extractor={"hop": 100})
    with pytest.raises(ValueError, match=r"Wav2Vec2FeatureExtractor has no setting 'n_fft'"):
        HFAudioEncoder(pretrained=str(tmp_path), feature_extractor={"n_fft": 400})


def test_default_normalization_follows_the_feature_extractor(tmp_path):
    assert _encoder("wavlm").normalize is True  # Wav2Vec2FeatureExtractor's default
    assert _encoder("wavlm", normalize=False).normalize is False
    assert _encoder("whisper").normalize is False


def test_missing_directory_and_offline_hub_id_are_reported(tmp_path, monkeypatch):
    import huggingface_hub.constants

    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        HFAudioEncoder(pretrained=str(tmp_path / "no_such_dir"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"HF_HUB_OFFLINE.*save_pretrained"):
        HFAudioEncoder(pretrained="nobody/no-such-wavlm")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "model_type"),
        ({"config": {"model_type": "wavlm"}, "pooling": "max"}, "`pooling`"),
        ({"config": {"model_type": "wavlm"}, "freeze": "all"}, "`freeze`"),
        ({"config": {"model_type": "bert", "hidden_size": 8, "num_attention_heads": 1}}, "audio"),
        ({"config": TINY["wavlm"], "sample_rate": 8000}, "`sample_rate`"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HFAudioEncoder(**kwargs)


def test_too_short_and_wrongly_shaped_inputs_are_refused():
    encoder = _encoder("wavlm")
    with pytest.raises(ValueError, match="at least one encoder frame"):
        encoder(torch.zeros(1, 10))
    with pytest.raises(ValueError, match=r"waveforms of shape \[B, N\]"):
        encoder(torch.zeros(1, 20, 8))


def _feature_encoder_prefixes(family: str) -> tuple[str, ...]:
    if family == "whisper":  # its positions are fixed sinusoids, frozen by transformers itself
        return ("model.conv1.", "model.conv2.", "model.embed_positions.")
    return ("model.feature_extractor.",)


@pytest.mark.parametrize("pooling", ["mean", "weighted"])
@pytest.mark.parametrize("freeze", ["none", "feature_encoder", "encoder"])
@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm", "whisper"])
def test_freezing_leaves_exactly_the_intended_parameters_trainable(family, freeze, pooling):
    encoder = _encoder(family, pooling=pooling, freeze=freeze)
    names = [name for name, _ in encoder.named_parameters()]
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    fixed = ("model.embed_positions.",) if family == "whisper" else ()
    if freeze == "none":
        expected = {name for name in names if not name.startswith(fixed)}
    elif freeze == "feature_encoder":
        expected = {n for n in names if not n.startswith(_feature_encoder_prefixes(family))}
    else:
        expected = {name for name in names if not name.startswith("model.")}
    assert trainable == expected
    assert ("layer_weights" in trainable) == (pooling == "weighted")
    classifier = AudioClassifier(encoder, num_classes=3)
    classifier.train()
    assert encoder.model.training == (freeze != "encoder")  # a frozen upstream: no dropout


def test_layer_weights_are_reported_as_probabilities():
    encoder = _encoder("hubert", pooling="weighted")
    encoder.layer_weights.data = torch.tensor([0.0, 1.0, 2.0])
    statistics = encoder.epoch_statistics()
    expected = torch.softmax(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), dim=0)
    assert list(statistics) == ["layer_weights/0", "layer_weights/1", "layer_weights/2"]
    for value, reference in zip(statistics.values(), expected, strict=True):
        assert float(value) == pytest.approx(float(reference), abs=1e-6)
    assert _encoder("hubert").epoch_statistics() == {}
