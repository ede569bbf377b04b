"""The config files compose (``config:`` reads another file first, dotted keys change single
values): what the docs and sweeps run parses to the values the full files used to state.

The expectations below are the values of the configs before they were split into a base and
its differences (docs/method.md, the authors' recipes), written out by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from console_runs import console_status

from add_lightning.experiments.config import compose_config

REPO = Path(__file__).resolve().parents[1]


def _spec_augment(freq_mask: int, time_mask: int) -> dict:
    """The parsed ``spec_augment`` of a data file (one value, which BEATs' null replaces)."""
    return {
        "class_path": "add_lightning.data.SpecAugment",
        "init_args": {"freq_mask": freq_mask, "time_mask": time_mask, "mask_value": 0.0},
    }


AST = "add_lightning.models.ASTBackbone"
BEATS = "add_lightning.models.BEATsBackbone"
# model/ast.yaml and the authors' AST optimizer/schedule (docs/method.md)
AST_RECIPE = {
    "model.init_args.backbone.class_path": AST,
    "model.init_args.backbone.init_args.pretrained": "MIT/ast-finetuned-audioset-10-10-0.4593",
    "model.init_args.backbone.init_args.num_mel_bins": 128,
    "model.init_args.backbone.init_args.pooling": "cls_dist",
    "model.init_args.optimizer.class_path": "torch.optim.Adam",
    "model.init_args.optimizer.init_args.lr": 6.7e-6,
    "model.init_args.optimizer.init_args.betas": [0.95, 0.999],
    "model.init_args.optimizer.init_args.weight_decay": 5.0e-6,
    "model.init_args.scheduler.class_path": "add_lightning.models.WarmupExponentialLR",
    "model.init_args.scheduler.init_args.warmup_epochs": 5,
    "model.init_args.scheduler.init_args.warmup_start_factor": 1.0e-5,
    "model.init_args.scheduler.init_args.gamma": 0.85,
    "trainer.max_epochs": 25,
    "data.init_args.features.window_type": "hanning",
    "data.init_args.features.waveform_scale": 1.0,
    "data.init_args.features.sample_rate": 16000,
    "data.init_args.features.num_mel_bins": 128,
    "data.init_args.features.frame_length_ms": 25.0,
    "data.init_args.features.frame_shift_ms": 10.0,
    "data.init_args.features.dither": 0.0,
    "data.init_args.normalization": None,
    "data.init_args.batch_size": 32,
}
# model/beats.yaml, the authors' BEATs optimizer/schedule and BEATs' features
BEATS_RECIPE = {
    "model.init_args.backbone.class_path": BEATS,
    "model.init_args.backbone.init_args.checkpoint": "checkpoints/BEATs_iter3_plus_AS2M.pt",
    "model.init_args.backbone.init_args.pooling": "patch_mean",
    "model.init_args.optimizer.class_path": "torch.optim.AdamW",
    "model.init_args.optimizer.init_args.lr": 8.0e-6,
    "model.init_args.optimizer.init_args.betas": [0.9, 0.98],
    "model.init_args.optimizer.init_args.weight_decay": 1.0e-2,
    "model.init_args.scheduler.class_path": "add_lightning.models.WarmupCosineLR",
    "model.init_args.scheduler.init_args.warmup_epochs": 5,
    "model.init_args.scheduler.init_args.warmup_start_factor": 1.0e-5,
    "model.init_args.scheduler.init_args.final_factor": 1.0e-3,
    "trainer.max_epochs": 25,
    "data.init_args.features.window_type": "povey",
    "data.init_args.features.waveform_scale": 32768.0,
    "data.init_args.features.num_mel_bins": 128,
    "data.init_args.normalization": "beats",
    "data.init_args.spec_augment": None,  # freq_mask 0, time_mask 0
    "data.init_args.batch_size": 16,
}
# configs/experiments/beats_ks2.yaml: the authors' KS2 learning rate, constant schedule, epochs
BEATS_KS2 = {
    **{k: v for k, v in BEATS_RECIPE.items() if not k.endswith("final_factor")},
    "model.init_args.optimizer.init_args.lr": 1.0e-4,
    "model.init_args.scheduler.class_path": "add_lightning.models.WarmupConstantLR",
    "trainer.max_epochs": 30,
}
ESC50 = {
    "data.init_args.dataset.class_path": "add_lightning.data.ESC50",
    "data.init_args.dataset.init_args.root": "data/esc50",
    "data.init_args.dataset.init_args.classes": None,
    "data.init_args.fold": 1,
    "data.init_args.features.target_frames": 512,
    "data.init_args.spec_augment": _spec_augment(freq_mask=24, time_mask=96),
    "data.init_args.cache_dir": "data/cache/esc50",
}
KS2 = {
    "data.init_args.dataset.class_path": "add_lightning.data.SpeechCommands",
    "data.init_args.fold": None,
    "data.init_args.features.target_frames": 128,
    "data.init_args.spec_augment": _spec_augment(freq_mask=48, time_mask=48),
    "data.init_args.cache_features": False,
    "data.init_args.cache_dir": "data/cache/speech_commands",
}
ER = {
    "data.init_args.dataset.class_path": "add_lightning.data.IEMOCAP",
    "data.init_args.dataset.init_args.label_set": "superb",
    "data.init_args.features.target_frames": 256,
    "data.init_args.spec_augment": _spec_augment(freq_mask=24, time_mask=96),
    "data.init_args.cache_dir": "data/cache/iemocap",
}
ADD_1111 = {
    "model.init_args.loss.class_path": "add_lightning.losses.ClassificationLoss",
    "model.init_args.loss.init_args.classifier.class_path": "add_lightning.losses.CrossEntropyLoss",
    "model.init_args.loss.init_args.embedding.class_path": "add_lightning.losses.ADDLoss",
    "model.init_args.loss.init_args.embedding.init_args.lambda_mu_p": 1.0,
    "model.init_args.loss.init_args.embedding.init_args.lambda_sigma_p": 1.0,
    "model.init_args.loss.init_args.embedding.init_args.lambda_mu_n": 1.0,
    "model.init_args.loss.init_args.embedding.init_args.lambda_sigma_n": 1.0,
    "model.init_args.loss.init_args.embedding.init_args.lambda_mu": 1.0,
    "model.init_args.loss.init_args.embedding.init_args.gather_distributed": True,
}
LAMBDAS = ("lambda_mu_p", "lambda_sigma_p", "lambda_mu_n", "lambda_sigma_n")


def _add(mu_p: float, sigma_p: float, mu_n: float, sigma_n: float) -> dict:
    weights = dict(zip(LAMBDAS, (mu_p, sigma_p, mu_n, sigma_n), strict=True))
    key = "model.init_args.loss.init_args.embedding.init_args."
    return {**ADD_1111, **{key + name: value for name, value in weights.items()}}


# sweeps/table2.yaml: each cell's values (data file, experiment file) ...
TABLE2_CELLS = {
    "esc50_ast": {**AST_RECIPE, **ESC50, "model.init_args.backbone.init_args.max_length": 512},
    "esc50_beats": {**ESC50, **BEATS_RECIPE},
    "ks2_ast": {
        **AST_RECIPE,
        **KS2,
        "model.init_args.backbone.init_args.max_length": 128,
        "model.init_args.optimizer.init_args.lr": 6.25e-5,
        "trainer.max_epochs": 30,
    },
    "ks2_beats": {**KS2, **BEATS_KS2},
    "er_ast": {**AST_RECIPE, **ER, "model.init_args.backbone.init_args.max_length": 256},
    "er_beats": {**ER, **BEATS_RECIPE, "data.init_args.features.window_type": "hanning"},
}
# ... and each row's (the loss files of the README's --grid)
TABLE2_LOSSES = {
    "ce": {
        "model.init_args.loss.init_args.classifier.class_path": (
            "add_lightning.losses.CrossEntropyLoss"
        ),
        "model.init_args.loss.init_args.embedding": None,
    },
    "focal": {
        "model.init_args.loss.init_args.classifier.class_path": "add_lightning.losses.FocalLoss",
        "model.init_args.loss.init_args.classifier.init_args.gamma": 2.0,
        "model.init_args.loss.init_args.embedding": None,
    },
    "opl": {
        "model.init_args.loss.init_args.embedding.class_path": (
            "add_lightning.losses.OrthogonalProjectionLoss"
        ),
        "model.init_args.loss.init_args.embedding.init_args.gamma": 2.0,
        "model.init_args.loss.init_args.embedding.init_args.weight": 0.1,
    },
    "add": ADD_1111,
}
# sweeps/ablation.yaml: docs/method.md's six lambda settings on ESC-50 with AST
ABLATION = {
    f"esc50_ast_add_{code}": {**AST_RECIPE, **ESC50, **_add(*(float(c) for c in code))}
    for code in ("1000", "0100", "0010", "0001", "1010", "1111")
}
# the README's commands: its --config files before the sweep's
SWEEP_COMMANDS = {
    "table2": (["trainer/gpu"], [f"configs/loss/{loss}.yaml" for loss in TABLE2_LOSSES]),
    "ablation": (["data/esc50", "experiments/ast_esc50", "trainer/gpu"], []),
}


def _sweep_members() -> list[tuple[str, list[str]]]:
    from add_lightning.experiments.sweep import expand_sweep, parse_grid, read_variants

    cwd = os.getcwd()
    os.chdir(REPO)  # the sweep files' paths are relative to the repository root
    try:
        members = []
        for sweep, (configs, grid) in SWEEP_COMMANDS.items():
            variants = read_variants(REPO / "sweeps" / f"{sweep}.yaml")
            grid_variants = parse_grid(["config=" + ",".join(grid)]) if grid else []
            for member in expand_sweep(variants, grid_variants):
                files = [str(path) for path in _files(configs)]
                members.append((member.name, files + [str(REPO / c) for c in member.configs]))
    finally:
        os.chdir(cwd)
    return members


def _sweep_expectation(name: str) -> dict:
    if name in ABLATION:
        return ABLATION[name]
    cell, loss = name.rsplit("_", 1)
    return {**TABLE2_CELLS[cell], **TABLE2_LOSSES[loss]}


def test_every_sweep_member_parses_to_the_values_of_the_full_files():
    members = _sweep_members()
    assert len(members) == 24 + 6  # Table 2's cells x losses, the ablation's six settings
    for name, files in members:
        config = compose_config(files)
        for key, value in _sweep_expectation(name).items():
            assert _get(config, key) == value, (name, key)


# (the --config files in order, the values they parse to) for the README's other commands
CASES = {
    # README: ESC-10 and Speech Commands V2-12 with the paper's AST recipes
    "esc10_ast": (
        ["data/esc10", "experiments/ast_esc50", "loss/add", "trainer/gpu"],
        {
            **AST_RECIPE,
            **ESC50,
            "data.init_args.dataset.init_args.classes": "esc10",
            "data.init_args.cache_dir": "data/cache/esc10",
            "model.init_args.backbone.init_args.max_length": 512,
        },
    ),
    "ks2_12_ast": (
        ["data/speech_commands_v2_12", "experiments/ast_ks2", "loss/add", "trainer/gpu"],
        {
            **KS2,
            "data.init_args.dataset.init_args.root": "data/speech_commands",
            "data.init_args.dataset.init_args.protocol": "v2-12",
            "data.init_args.dataset.init_args.unknown_fraction": 0.1,
            "data.init_args.dataset.init_args.silence_fraction": 0.1,
            "data.init_args.dataset.init_args.silence_dir": None,
            "data.init_args.dataset.init_args.seed": 0,
            "data.init_args.cache_dir": "data/cache/speech_commands_v2_12",
            "model.init_args.backbone.init_args.max_length": 128,
            "model.init_args.optimizer.init_args.lr": 6.25e-5,
        },
    ),
    # README: SUPERB's ER setting with two speech encoders
    "er_wavlm": (
        ["data/iemocap_waveform", "experiments/wavlm_er", "loss/add", "trainer/gpu"],
        {
            "model.init_args.backbone.class_path": "add_lightning.models.HFAudioEncoder",
            "model.init_args.backbone.init_args.pretrained": "microsoft/wavlm-base-plus",
            "model.init_args.backbone.init_args.pooling": "weighted",
            "model.init_args.backbone.init_args.freeze": "encoder",
            "model.init_args.optimizer.class_path": "torch.optim.Adam",
            "model.init_args.optimizer.init_args.lr": 1.0e-4,
            "model.init_args.scheduler": None,
            "trainer.max_epochs": None,
            "trainer.max_steps": 30000,
            "trainer.accumulate_grad_batches": 8,
            "trainer.gradient_clip_val": 1.0,
        },
    ),
    "er_hubert": (
        ["data/iemocap_waveform", "experiments/hubert_er", "loss/add", "trainer/gpu"],
        {"model.init_args.backbone.init_args.pretrained": "facebook/hubert-base-ls960"},
    ),
    # README: the tiny ablation on the quickstart
    "tiny_add_1000": (["quickstart", "loss/ablation/add_1000"], _add(1.0, 0.0, 0.0, 0.0)),
    "tiny_add_1111": (["quickstart", "loss/ablation/add_1111"], _add(1.0, 1.0, 1.0, 1.0)),
    # a loss file after the ablation file: the last one wins
    "ablation_then_ce": (
        ["quickstart", "loss/ablation/add_0001", "loss/ce"],
        {"model.init_args.loss.init_args.embedding": None},
    ),
}


def _get(config: dict, dotted: str):
    node = config
    for key in dotted.split("."):
        assert isinstance(node, dict) and key in node, f"{dotted}: no {key!r} in the parsed config"
        node = node[key]
    return node


def _files(names: list[str]) -> list[Path]:
    return [REPO / "configs" / f"{name}.yaml" for name in names]


@pytest.mark.parametrize("case", list(CASES))
def test_composed_configs_parse_to_the_values_of_the_full_files(case):
    names, expected = CASES[case]
    config = compose_config(_files(names))
    for key, value in expected.items():
        assert _get(config, key) == value, key


def test_the_console_script_prints_the_composed_config(tmp_path, monkeypatch, capsys):
    """What ``add-lightning fit --print_config`` shows: an ablation file after a BEATs recipe."""
    names = ["data/iemocap", "experiments/beats_ks2", "loss/ablation/add_0100"]
    args = [item for path in _files(names) for item in ("--config", str(path))]
    monkeypatch.chdir(tmp_path)  # `config:` paths are relative to the file that names them
    assert console_status(["fit", "--print_config", *args]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    expected = {**ER, **BEATS_KS2, **_add(0.0, 1.0, 0.0, 0.0)}
    for key, value in expected.items():
        assert _get(config, key) == value, key
