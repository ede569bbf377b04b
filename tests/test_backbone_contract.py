"""Every backbone keeps the Backbone contract, as transformers' ModelTesterMixin checks models.

One case per backbone (tiny random architectures, no downloads): the embedding shape, the
padding mask, the input length, the sample rate, the training hooks and a checkpoint round
trip through the CLI's model construction. The references are the architectures' own
settings (their width, their rate) and the backbone run on each clip alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from test_backbone_beats import TINY as TINY_BEATS
from test_backbone_hf_audio import TINY as TINY_HF

from add_lightning.checkpoint import load_checkpoint
from add_lightning.lightning_cli import AddLightningCLI
from add_lightning.models import AudioClassifier
from add_lightning.models.backbones import Backbone

BATCH = 3


def _fbank(bins: int) -> Callable[[int, torch.Generator], torch.Tensor]:
    return lambda length, generator: torch.randn(BATCH, length, bins, generator=generator)


def _waveforms(length: int, generator: torch.Generator) -> torch.Tensor:
    return 0.1 * torch.randn(BATCH, length, generator=generator)


@dataclass(frozen=True)
class Case:
    """A backbone as a config names it, its input and what the contract expects of it."""

    class_path: str
    init_args: dict
    inputs: Callable[[int, torch.Generator], torch.Tensor]  # (length, generator) -> [B, T(, F)]
    length: int  # of a full input: frames, or samples of a waveform
    clip_lengths: list[int]  # of the clips of a padded batch (a multiple of BEATs' patch)
    embedding_dim: int  # the architecture's width
    sample_rate: int | None  # of the waveforms it takes; None: fbank frames
    other_lengths: list[int] = field(default_factory=list)  # more full lengths it takes

    def build(self) -> Backbone:
        module, name = self.class_path.rsplit(".", 1)
        torch.manual_seed(0)
        return getattr(__import__(module, fromlist=[name]), name)(**self.init_args).eval()


TINY_AST = {
    "pretrained": None,
    "max_length": 32,
    "num_mel_bins": 32,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "patch_size": 8,
    "frequency_stride": 8,
    "time_stride": 8,
}
HF = "add_lightning.models.HFAudioEncoder"
WAVEFORM_LENGTHS = [9000, 2500, 6001]
CASES = {
    "ast": Case(
        "add_lightning.models.ASTBackbone", TINY_AST, _fbank(32), 32, [16, 32, 24], 32, None
    ),
    "beats": Case(
        "add_lightning.models.BEATsBackbone",
        TINY_BEATS,
        _fbank(32),
        64,
        [64, 16, 48],
        TINY_BEATS["encoder_embed_dim"],
        None,
        other_lengths=[32, 80],
    ),
    **{
        family: Case(
            HF,
            {"config": TINY_HF[family]},
            _waveforms,
            9000,
            WAVEFORM_LENGTHS,
            32,  # hidden_size (Whisper: d_model)
            16000,  # the family's feature extractor's rate
            other_lengths=[4000, 20000],  # Whisper: shorter and longer than its 1 s input
        )
        for family in ("wav2vec2", "wav2vec2_layer_norm", "hubert", "wavlm", "whisper")
    },
}
BACKBONES = pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))


def _padding_mask(lengths: list[int]) -> torch.Tensor:
    return torch.arange(max(lengths)) >= torch.tensor(lengths)[:, None]


@BACKBONES
def test_embeddings_have_the_declared_width(case):
    backbone = case.build()
    assert isinstance(backbone, Backbone)
    assert backbone.embedding_dim == case.embedding_dim
    generator = torch.Generator().manual_seed(0)
    for length in [case.length, *case.other_lengths]:
        with torch.no_grad():
            embeddings = backbone(case.inputs(length, generator))
        assert embeddings.shape == (BATCH, case.embedding_dim)
        assert embeddings.dtype == torch.float32
        assert torch.isfinite(embeddings).all()


@BACKBONES
def test_input_shape_is_the_only_shape_taken(case):
    backbone = case.build()
    shape = backbone.input_shape
    if case.class_path.endswith("ASTBackbone"):  # max_length frames of num_mel_bins
        assert shape == (TINY_AST["max_length"], TINY_AST["num_mel_bins"])
        generator = torch.Generator().manual_seed(0)
        with pytest.raises(ValueError, match=r"shape \[B, 32, 32\]"):
            backbone(case.inputs(shape[0] - 1, generator))
        # the model summary's forward pass (FLOPs) runs on zeros of that shape
        assert AudioClassifier(backbone, 3).example_input_array.shape == (1, *shape)
    else:  # any length (test_embeddings_have_the_declared_width runs several)
        assert shape is None
        assert AudioClassifier(backbone, 3).example_input_array is None


@BACKBONES
def test_a_clip_in_a_padded_batch_is_embedded_as_alone(case):
    backbone = case.build()
    model = AudioClassifier(backbone, 3).eval()
    lengths = case.clip_lengths
    inputs = case.inputs(max(lengths), torch.Generator().manual_seed(1))
    with torch.no_grad():
        if not backbone.accepts_padding_mask:
            # AST's recipe has no mask: the classifier gives it the padded input as it is
            padded = model.embed(inputs, num_frames=torch.tensor(lengths))
            torch.testing.assert_close(padded, backbone(inputs), rtol=0, atol=0)
            return
        mask = _padding_mask(lengths)
        inputs = inputs.masked_fill(mask.reshape(*mask.shape, *[1] * (inputs.ndim - 2)), 0.0)
        padded = backbone(inputs, padding_mask=mask)
        # the classifier makes the same mask from the valid lengths that batches carry
        torch.testing.assert_close(
            model.embed(inputs, num_frames=torch.tensor(lengths)), padded, rtol=0, atol=0
        )
        for row, length in enumerate(lengths):
            alone = backbone(inputs[row : row + 1, :length])[0]
            torch.testing.assert_close(padded[row], alone, rtol=0, atol=1e-5)


@BACKBONES
def test_sample_rate_and_shortest_clip(case):
    backbone = case.build()
    assert backbone.sample_rate == case.sample_rate
    minimum = backbone.min_samples
    assert isinstance(minimum, int) and minimum >= 1
    if case.sample_rate is None:  # fbank frames: the data's settings decide
        assert minimum == 1
        return
    with torch.no_grad():
        assert backbone(torch.zeros(1, minimum)).shape == (1, case.embedding_dim)
        if minimum > 1:
            with pytest.raises(ValueError, match="at least one encoder frame"):
                backbone(torch.zeros(1, minimum - 1))


@BACKBONES
def test_training_hooks(case):
    backbone = case.build().train()
    embeddings = backbone(case.inputs(case.length, torch.Generator().manual_seed(2)))
    embeddings.square().mean().backward()
    assert any(p.grad is not None for p in backbone.parameters())
    assert backbone.release_dropped_gradients() is None
    statistics = backbone.epoch_statistics()
    assert all(value.ndim == 0 and torch.isfinite(value) for value in statistics.values())


@BACKBONES
def test_checkpoint_round_trip(case, tmp_path):
    # Built as `add-lightning fit` builds it, saved by the Trainer, read back by the public
    # load path with nothing but the file: the same weights, the same embeddings.
    config = {
        "model": {
            "class_path": "add_lightning.models.AudioClassifier",
            "init_args": {"backbone": {"class_path": case.class_path, "init_args": case.init_args}},
        },
        "data": {"class_path": "test_models.ToyData"},
        "trainer": {"logger": False, "default_root_dir": str(tmp_path)},
    }
    torch.manual_seed(0)
    cli = AddLightningCLI(args=config, run=False)
    model = cli.model.eval()
    cli.trainer.strategy.connect(model)
    path = Path(tmp_path) / "model.ckpt"
    cli.trainer.save_checkpoint(path)

    stored = load_checkpoint(path)
    assert stored["hyper_parameters"]["backbone"]["class_path"] == case.class_path
    # the architecture as built, none of the pretrained sources (the config's defaults beside)
    init_args = stored["hyper_parameters"]["backbone"]["init_args"]
    assert init_args.items() >= model.backbone.checkpoint_init_args().items()
    restored = AudioClassifier.load_from_checkpoint(path, weights_only=True).eval()
    assert type(restored.backbone) is type(model.backbone)
    assert list(restored.state_dict()) == list(model.state_dict())
    inputs = case.inputs(case.length, torch.Generator().manual_seed(3))
    with torch.no_grad():  # the same weights on the same input: identical, on the CPU
        torch.testing.assert_close(restored(inputs), model(inputs), rtol=0, atol=0)
