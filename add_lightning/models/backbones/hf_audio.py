"""Any transformers speech encoder (wav2vec 2.0, HuBERT, WavLM, Whisper) on raw waveforms."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.feature_extraction_utils import FeatureExtractionMixin
from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING

from add_lightning.hub import checked_pretrained, offline_hint
from add_lightning.models.backbones.base import Backbone
from add_lightning.tensor_utils import valid_positions

__all__ = ["HFAudioEncoder", "conv_output_lengths", "masked_mean", "normalize_waveforms"]

Pooling = Literal["mean", "weighted"]
Freeze = Literal["none", "feature_encoder", "encoder"]

# Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm adds this to the variance.
_NORMALIZE_EPS = 1e-7

# Config fields that checkpoint_init_args leaves out: no part of the encoder's architecture.
_NOT_ARCHITECTURE = ("transformers_version", "id2label", "label2id")


def conv_output_lengths(lengths: Tensor, kernels: list[int], strides: list[int]) -> Tensor:
    """Valid output frames of a stack of unpadded 1-d convolutions: ``floor((L - k) / s) + 1``.

    Shape:
        - lengths: ``[B]`` int64 (input samples or frames)
        - output: ``[B]`` int64 (0 where the input is shorter than the receptive field)
    """
    for kernel, stride in zip(kernels, strides, strict=True):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp_min(0)


def masked_mean(hidden: Tensor, valid: Tensor) -> Tensor:
    """Mean over the valid frames of each sequence.

    Shape:
        - hidden: ``[B, T, H]``; valid: ``[B, T]`` bool (True = valid frame)
        - output: ``[B, H]``
    """
    weights = valid.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def normalize_waveforms(waveforms: Tensor, lengths: Tensor) -> Tensor:
    """Zero mean, unit variance per clip over its valid samples; padding set to 0.

    The input normalisation of ``Wav2Vec2FeatureExtractor(do_normalize=True)`` (which wav2vec
    2.0, HuBERT and WavLM checkpoints declare in their ``preprocessor_config.json``), computed
    on the device for a padded batch: ``(x - mean) / sqrt(var + 1e-7)`` over the first
    ``length`` samples.

    Shape:
        - waveforms: ``[B, N]``; lengths: ``[B]`` int64
        - output: ``[B, N]``
    """
    valid = valid_positions(lengths, waveforms.shape[1])
    count = lengths.clamp_min(1).to(waveforms.dtype).unsqueeze(1)
    masked = waveforms * valid
    mean = masked.sum(dim=1, keepdim=True) / count
    variance = (((waveforms - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count
    return (waveforms - mean) / torch.sqrt(variance + _NORMALIZE_EPS) * valid


class _ValidFramesGroupNorm(nn.GroupNorm):
    """Per-channel GroupNorm of the first feature-encoder convolution over valid frames only.

    wav2vec 2.0/HuBERT/WavLM base models normalise each channel over the whole time axis, so
    zero padding changes the statistics of every frame (transformers' documentation says not
    to pad such models). Restricted to each clip's valid frames, a padded clip gets the
    encoding it gets alone. Parameters keep GroupNorm's names, so checkpoints load unchanged.
    """

    valid_frames: Tensor | None = None

    def forward(self, hidden: Tensor) -> Tensor:
        if self.valid_frames is None:
            return super().forward(hidden)
        valid = valid_positions(self.valid_frames, hidden.shape[-1])
        weights = valid.to(hidden.dtype).unsqueeze(1)  # [B, 1, T]
        count = weights.sum(dim=-1, keepdim=True).clamp_min(1.0)
        mean = (hidden * weights).sum(dim=-1, keepdim=True) / count
        variance = (((hidden - mean) * weights) ** 2).sum(dim=-1, keepdim=True) / count
        normed = (hidden - mean) / torch.sqrt(variance + self.eps)
        return normed * self.weight[:, None] + self.bias[:, None]


def _offline_error(pretrained: str, error: Exception) -> OSError:
    hint = offline_hint()
    return OSError(
        f"Could not load the audio encoder `pretrained={pretrained!r}` ({error}). {hint}"
        "download it once elsewhere with `AutoModel.from_pretrained(ID).save_pretrained(DIR)` and "
        "`AutoFeatureExtractor.from_pretrained(ID).save_pretrained(DIR)` and pass "
        "`pretrained: DIR` (a local directory), or give `config` without `pretrained` for a "
        "randomly initialised model."
    )


def _encoder_class(config: PretrainedConfig) -> type[PreTrainedModel] | None:
    """The class of an encoder saved alone (``architectures: [WhisperEncoder]``), else None."""
    architectures = getattr(config, "architectures", None) or []
    if len(architectures) != 1 or not architectures[0].endswith("Encoder"):
        return None
    # not exported by transformers: in the modeling module beside the config's
    modeling = type(config).__module__.replace(".configuration_", ".modeling_")
    return getattr(importlib.import_module(modeling), architectures[0], None)


def _load_model(pretrained: str, overrides: dict[str, Any]) -> nn.Module:
    """``AutoModel.from_pretrained``; an encoder saved alone (``WhisperEncoder``) as itself."""
    encoder_class = _encoder_class(AutoConfig.from_pretrained(pretrained))
    if encoder_class is not None:
        return encoder_class.from_pretrained(pretrained, **overrides)
    return AutoModel.from_pretrained(pretrained, **overrides)


def _model_from_config(config: PretrainedConfig) -> nn.Module:
    """A randomly initialised model of ``config``: the class :func:`_load_model` would load."""
    encoder_class = _encoder_class(config)
    if encoder_class is not None:
        return encoder_class._from_config(config)
    return AutoModel.from_config(config)


def _extractor_arguments(extractor_class: type[FeatureExtractionMixin]) -> list[str]:
    """The named constructor arguments of a feature extractor class."""
    parameters = inspect.signature(extractor_class.__init__).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in kinds and p.name != "self"]


def _checked_extractor_settings(
    extractor_class: type[FeatureExtractionMixin], settings: dict[str, Any]
) -> dict[str, Any]:
    arguments = _extractor_arguments(extractor_class)
    unknown = sorted(set(settings) - set(arguments))
    if unknown:
        raise ValueError(
            f"Invalid argument `feature_extractor`: {extractor_class.__name__} has no setting "
            f"{', '.join(map(repr, unknown))}; expected some of {', '.join(arguments)}"
        )
    return settings


def _default_extractor(
    config: PretrainedConfig, settings: dict[str, Any] | None = None
) -> FeatureExtractionMixin:
    """The family's feature extractor (random init: no preprocessor file), ``settings`` applied.

    Whisper's defaults fit the encoder: ``feature_size = num_mel_bins`` and the
    ``chunk_length`` (seconds) of its ``2 * max_source_positions`` input frames.
    """
    try:
        extractor_class = FEATURE_EXTRACTOR_MAPPING[type(config)]
    except KeyError:
        raise ValueError(
            f"Expected an audio encoder with a transformers feature extractor but model_type "
            f"{config.model_type!r} has none"
        ) from None
    settings = _checked_extractor_settings(extractor_class, dict(settings or {}))
    if config.model_type != "whisper":
        return extractor_class(**settings)
    defaults: dict[str, Any] = {"feature_size": config.num_mel_bins}
    if "chunk_length" not in settings:
        # the encoder takes exactly 2 * max_source_positions mel frames (30 s for real models)
        samples = config.max_source_positions * 2 * 160  # hop of 160 samples at 16 kHz
        if samples % 16000:
            raise ValueError(
                "Expected a Whisper config whose max_source_positions covers whole seconds "
                f"(multiples of 50) but got max_source_positions={config.max_source_positions}"
            )
        defaults["chunk_length"] = samples // 16000
    return extractor_class(**{**defaults, **settings})


def _pretrained_extractor(
    pretrained: str, config: PretrainedConfig, settings: dict[str, Any]
) -> FeatureExtractionMixin:
    """The ``preprocessor_config.json`` of ``pretrained`` (else the family's), ``settings``
    applied."""
    try:
        extractor = AutoFeatureExtractor.from_pretrained(pretrained)
    except OSError:  # a model without preprocessor_config.json: the family's defaults
        return _default_extractor(config, settings)
    if not settings:
        return extractor
    settings = _checked_extractor_settings(type(extractor), settings)
    stored = extractor.to_dict()
    del stored["feature_extractor_type"]
    return type(extractor)(**{**stored, **settings})


class HFAudioEncoder(Backbone):
    """A transformers speech encoder as embedding extractor: waveforms -> one embedding per clip.

    Families: every ``AutoModel`` that takes waveforms (``input_values``: wav2vec 2.0, HuBERT,
    WavLM, data2vec-audio, ...) and Whisper (whose ``AutoModel`` is encoder-decoder: only the
    encoder is kept). The encoder's own input convention is applied inside ``forward``, from its
    ``AutoFeatureExtractor`` settings, so the data side only pads waveforms:

    - waveform encoders: ``do_normalize`` (zero mean, unit variance over each clip's valid
      samples) and transformers' ``attention_mask`` built from the padding. The per-channel
      GroupNorm of base models' first convolution is restricted to the valid frames, so a clip
      in a padded batch is encoded as alone.
    - Whisper: the ``WhisperFeatureExtractor`` log-mel of each clip's valid samples, padded (or
      cut) to the encoder's fixed input (30 s for real checkpoints), as Whisper was trained;
      Whisper attends over that padding (it has no attention mask), the pooling does not.

    Pooling: ``"mean"``: mean of the last hidden state over the clip's valid frames;
    ``"weighted"``: SUPERB's learnable softmax-weighted sum of all hidden states (the
    embedding output and every layer), then the same mean. :meth:`epoch_statistics` reports the
    softmax weights (logged by ``AudioClassifier`` as ``train/layer_weights/<i>``).

    Args:
        pretrained: Hugging Face hub id or a ``save_pretrained`` directory (holding the model and
            preferably its ``preprocessor_config.json``); ``None`` for a random initialisation
            from ``config``.
        config: With ``pretrained=None``: ``model_type`` (``"wav2vec2"``, ``"hubert"``,
            ``"wavlm"``, ``"whisper"``, ...) and any fields of its transformers config. With
            ``pretrained``: fields that override the checkpoint's config (e.g.
            ``mask_time_prob``, ``layerdrop``).
        pooling: ``"mean"`` or ``"weighted"`` (see above).
        freeze: ``"none"``; ``"feature_encoder"``: the convolutional feature encoder is frozen
            (the usual wav2vec 2.0 fine-tuning; Whisper: its two convolutions); ``"encoder"``:
            the whole encoder is frozen and kept in eval mode (SUPERB's frozen upstream: only
            the layer weights and the head train).
        normalize: Override the feature extractor's ``do_normalize``; ``None`` keeps it.
        sample_rate: Rate of the input waveforms; must equal the feature extractor's.
        feature_extractor: Settings of the ``AutoFeatureExtractor`` (its constructor arguments,
            e.g. ``do_normalize``, ``sampling_rate``; Whisper: ``feature_size``, ``n_fft``,
            ``hop_length``, ``chunk_length``) that override those of ``pretrained``'s
            ``preprocessor_config.json`` or, without it, the family's defaults.

    :meth:`checkpoint_init_args` describes an encoder built from ``pretrained`` by ``config``
    and ``feature_extractor`` alone, so that a checkpoint rebuilds it without the pretrained
    weights.

    Shape:
        - features: ``[B, N]`` float waveforms, zero-padded
        - padding_mask: ``[B, N]`` bool, True at padding samples (``None``: no padding)
        - output: ``[B, D]`` with ``D = embedding_dim = hidden_size`` (Whisper: ``d_model``)

    Attributes:
        accepts_padding_mask: True: ``AudioClassifier.embed`` turns valid lengths
            (``num_frames``, here samples) into the padding mask, as ``classify`` passes them.
    """

    accepts_padding_mask = True

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        pooling: Pooling = "mean",
        freeze: Freeze = "none",
        normalize: bool | None = None,
        sample_rate: int = 16000,
        feature_extractor: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "weighted"):
            raise ValueError(
                f"Expected argument `pooling` to be 'mean' or 'weighted' but got {pooling!r}"
            )
        if freeze not in ("none", "feature_encoder", "encoder"):
            raise ValueError(
                "Expected argument `freeze` to be 'none', 'feature_encoder' or 'encoder' but got "
                f"{freeze!r}"
            )
        overrides = dict(config or {})
        if pretrained is None:
            model_type = overrides.pop("model_type", None)
            if model_type is None:
                raise ValueError(
                    "Expected argument `pretrained` (a hub id or directory) or a `config` with a "
                    "`model_type` (e.g. {'model_type': 'wavlm', 'hidden_size': 32}) but got "
                    "neither"
                )
            try:
                model_config = AutoConfig.for_model(model_type, **overrides)
            except ValueError as error:
                raise ValueError(f"Invalid argument `config`: {error}") from None
            model = _model_from_config(model_config)
            extractor = _default_extractor(model_config, feature_extractor)
        else:
            pretrained = checked_pretrained(pretrained)
            try:
                model = _load_model(pretrained, overrides)
            except OSError as error:
                raise _offline_error(pretrained, error) from error
            extractor = _pretrained_extractor(
                pretrained, model.config, dict(feature_extractor or {})
            )
        if hasattr(model, "get_encoder") and model.main_input_name != "input_values":
            model = model.get_encoder()  # Whisper: the encoder alone
        self.model = model
        self.extractor = extractor
        self.main_input = model.main_input_name
        if self.main_input not in ("input_values", "input_features"):
            raise ValueError(
                f"Expected an audio encoder taking input_values or input_features but "
                f"{type(model).__name__} takes {self.main_input!r}"
            )
        if sample_rate != extractor.sampling_rate:
            raise ValueError(
                f"Expected argument `sample_rate` to equal the encoder's sampling rate "
                f"{extractor.sampling_rate} but got {sample_rate}"
            )
        self.sample_rate = sample_rate
        self.normalize = bool(
            getattr(extractor, "do_normalize", False) if normalize is None else normalize
        )
        self.pooling = pooling
        self.freeze = freeze
        model_config = model.config
        self.embedding_dim: int = int(model_config.hidden_size)
        if pooling == "weighted":
            layers = model_config.num_hidden_layers + 1  # embedding output + every layer
            self.layer_weights = nn.Parameter(torch.zeros(layers))  # uniform, as s3prl
        self._group_norm = self._restrict_group_norm()
        self._freeze(freeze)
        # from_pretrained returns the model in eval mode: in training mode as a model built from
        # `config` (and as the one rebuilt from a checkpoint), so dropout and SpecAugment train
        self.train()

    def _restrict_group_norm(self) -> _ValidFramesGroupNorm | None:
        extractor = getattr(self.model, "feature_extractor", None)
        layers = getattr(extractor, "conv_layers", None)
        norm = getattr(layers[0], "layer_norm", None) if layers else None
        if not isinstance(norm, nn.GroupNorm) or norm.num_groups != norm.num_channels:
            return None
        restricted = _ValidFramesGroupNorm(norm.num_groups, norm.num_channels, norm.eps)
        restricted.load_state_dict(norm.state_dict())
        layers[0].layer_norm = restricted
        return restricted

    def _freeze(self, freeze: Freeze) -> None:
        if freeze == "encoder":
            self.model.requires_grad_(False)
        elif freeze == "feature_encoder":
            if isinstance(getattr(self.model, "feature_extractor", None), nn.Module):
                self.model.feature_extractor.requires_grad_(False)  # wav2vec 2.0 and kin
            elif hasattr(self.model, "conv1") and hasattr(self.model, "conv2"):  # Whisper
                self.model.conv1.requires_grad_(False)
                self.model.conv2.requires_grad_(False)
            else:
                raise ValueError(
                    f"Expected argument `freeze` to be 'none' or 'encoder' for "
                    f"{type(self.model).__name__}, which has no convolutional feature encoder"
                )

    def checkpoint_init_args(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this encoder with random weights.

        ``pretrained=None``; ``config``: the model's whole transformers config with its
        ``model_type`` (a pretrained model's own, its overrides applied; ``architectures`` names
        an encoder saved alone, e.g. ``WhisperEncoder``, which is rebuilt as itself);
        ``feature_extractor``: every constructor argument of the feature extractor as built
        (``preprocessor_config.json``'s ``do_normalize``, ``sampling_rate``, Whisper's
        ``feature_size``, ``hop_length``, ``chunk_length``, ...); ``normalize`` as applied;
        ``pooling``, ``freeze`` and ``sample_rate``. ``AudioClassifier`` stores them in its
        checkpoints, so that loading one (whose ``state_dict`` then fills the weights, the
        layer weights included) neither downloads nor reads the pretrained encoder.
        """
        config = {
            key: value
            for key, value in self.model.config.to_dict().items()
            # the source's path, version and the label names of a fine-tuned head are no
            # part of the encoder (json keys: id2label's int keys are not valid arguments)
            if not key.startswith("_") and key not in _NOT_ARCHITECTURE
        }
        extractor = {
            name: getattr(self.extractor, name)
            for name in _extractor_arguments(type(self.extractor))
            if hasattr(self.extractor, name)
        }
        return {
            "pretrained": None,
            "config": config,
            "pooling": self.pooling,
            "freeze": self.freeze,
            "normalize": self.normalize,
            "sample_rate": self.sample_rate,
            "feature_extractor": extractor,
        }

    def train(self, mode: bool = True) -> HFAudioEncoder:
        super().train(mode)
        if self.freeze == "encoder":
            self.model.eval()  # a frozen upstream: no dropout, no SpecAugment masking
        return self

    @property
    def min_samples(self) -> int:
        """The fewest samples a clip needs: one encoder frame (Whisper: one sample)."""
        if self.main_input == "input_features":
            return 1
        config = self.model.config
        samples = 1  # frames, then samples: the receptive field of one output frame
        for kernel, stride in zip(reversed(config.conv_kernel), reversed(config.conv_stride)):
            samples = (samples - 1) * stride + kernel
        return samples

    def epoch_statistics(self) -> dict[str, Tensor]:
        """The softmax layer weights ``{"layer_weights/<i>": w_i}`` (empty for mean pooling)."""
        if self.pooling != "weighted":
            return {}
        weights = torch.softmax(self.layer_weights.detach().float(), dim=0)
        return {f"layer_weights/{i}": weight for i, weight in enumerate(weights)}

    def forward(self, features: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Embed a batch of zero-padded waveforms.

        Shape:
            - features: ``[B, N]``; padding_mask: ``[B, N]`` bool (True = padding) or None
            - output: ``[B, D]``
        """
        if features.ndim != 2:
            raise ValueError(
                f"Expected `features` to be waveforms of shape [B, N] but got "
                f"{tuple(features.shape)}; use WaveformDataModule for this backbone"
            )
        if padding_mask is not None and padding_mask.shape != features.shape:
            raise ValueError(
                f"Expected argument `padding_mask` of shape {tuple(features.shape)} but got "
                f"{tuple(padding_mask.shape)}"
            )
        batch, samples = features.shape
        if padding_mask is None:
            lengths = torch.full((batch,), samples, dtype=torch.int64, device=features.device)
        else:
            lengths = (~padding_mask.bool()).sum(dim=1)
        if self.main_input == "input_features":
            hidden_states, frames = self._whisper(features, lengths)
        else:
            hidden_states, frames = self._waveform_encoder(features, lengths)
        if self.pooling == "weighted":
            weights = torch.softmax(self.layer_weights, dim=0).to(hidden_states[-1].dtype)
            hidden = torch.einsum("l,lbth->bth", weights, torch.stack(hidden_states))
        else:
            hidden = hidden_states[-1]
        valid = valid_positions(frames, hidden.shape[1])
        return masked_mean(hidden, valid)

    def _waveform_encoder(self, waveforms: Tensor, lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        config = self.model.config
        frames = conv_output_lengths(lengths, config.conv_kernel, config.conv_stride)
        if bool((frames < 1).any()):
            shortest = int(lengths.min())
            raise ValueError(
                f"Expected every clip to span at least one encoder frame but one has {shortest} "
                f"samples ({shortest / self.sample_rate:.4f} s)"
            )
        waveforms = waveforms.float()
        if self.normalize:
            waveforms = normalize_waveforms(waveforms, lengths)
        attention_mask = valid_positions(lengths, waveforms.shape[1])
        if self._group_norm is not None:
            self._group_norm.valid_frames = conv_output_lengths(
                lengths, config.conv_kernel[:1], config.conv_stride[:1]
            )
        try:
            output = self.model(
                input_values=waveforms,
                attention_mask=attention_mask.long(),
                output_hidden_states=self.pooling == "weighted",
            )
        finally:
            if self._group_norm is not None:
                self._group_norm.valid_frames = None
        hidden_states = output.hidden_states if self.pooling == "weighted" else None
        return list(hidden_states or [output.last_hidden_state]), frames

    def _whisper(self, waveforms: Tensor, lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        extractor = self.extractor
        clips = [
            waveform[:length].float().cpu().numpy()
            for waveform, length in zip(waveforms, lengths.tolist(), strict=True)
        ]
        inputs = extractor(
            clips,
            sampling_rate=self.sample_rate,
            return_tensors="pt",
            do_normalize=self.normalize,
            device=str(waveforms.device),
        )
        dtype = next(self.model.parameters()).dtype
        input_features = inputs["input_features"].to(waveforms.device, dtype)
        # valid mel frames ceil(L / hop), then the stride-2 convolution halves them (rounded up)
        mel_frames = (lengths.clamp_max(extractor.n_samples) + extractor.hop_length - 1) // (
            extractor.hop_length
        )
        frames = (mel_frames + 1) // 2
        if bool((frames < 1).any()):
            raise ValueError("Expected every clip to hold at least one sample but one has none")
        output = self.model(
            input_features=input_features, output_hidden_states=self.pooling == "weighted"
        )
        hidden_states = output.hidden_states if self.pooling == "weighted" else None
        return list(hidden_states or [output.last_hidden_state]), frames
