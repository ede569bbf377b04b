"""The add-lightning command: run layout, checkpoints, resume, predict, dispatch, DDP."""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from console_runs import console_status
from tiny_runs import tiny_ast, tiny_cv_config

from add_lightning.cli import main
from add_lightning.lightning_cli import AddLightningCLI
from add_lightning.models import AudioClassifier

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# test_models.ToyData: 3 learnable classes of random 32x32 "fbank" clips (importable because
# pytest puts tests/ on sys.path; subprocesses get it through PYTHONPATH)
TINY_CONFIG = {
    "data": {"class_path": "test_models.ToyData", "init_args": {"size": 24, "batch_size": 8}},
    "model": {
        "init_args": {
            "backbone": {
                "class_path": "add_lightning.models.ASTBackbone",
                "init_args": tiny_ast(
                    32, 32, num_hidden_layers=2, patch_size=8, frequency_stride=8, time_stride=8
                ),
            },
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 3e-3}},
            "scheduler": {
                "class_path": "add_lightning.models.WarmupExponentialLR",
                "init_args": {"warmup_epochs": 1},
            },
        }
    },
    "trainer": {
        "accelerator": "cpu",
        "max_epochs": 2,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
    },
}


@pytest.fixture
def tiny_config(tmp_path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_CONFIG))
    return str(path)


def _base(tiny_config: str, run_dir: Path) -> list[str]:
    return [
        "--config",
        tiny_config,
        "--config",
        str(REPO / "configs/loss/add.yaml"),
        "--trainer.default_root_dir",
        str(run_dir),
    ]


def test_fit_test_predict_and_run_layout(tiny_config, tmp_path):
    run = tmp_path / "run"
    main(["fit", *_base(tiny_config, run)])
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["seed_everything"] == 0
    assert saved["model"]["init_args"]["loss"]["init_args"]["embedding"]["class_path"] == (
        "add_lightning.losses.ADDLoss"
    )

    best = run / "checkpoints" / "best.ckpt"
    main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(best)])
    assert (run / "config_test.yaml").is_file()  # config.yaml of fit is kept

    output = run / "predictions.npz"
    main(
        [
            "predict",
            "--config",
            str(run / "config.yaml"),
            "--ckpt_path",
            str(best),
            "--trainer.callbacks+=add_lightning.models.EmbeddingWriter",
            "--trainer.callbacks.output_path",
            str(output),
            "--return_predictions",
            "false",
        ]
    )
    with np.load(output) as data:
        assert data["embeddings"].shape == (24, 32)
        assert data["logits"].shape == (24, 3)
        assert data["class_names"].tolist() == ["a", "b", "c"]
        logits = torch.from_numpy(data["logits"])

    # a CLI checkpoint restores without arguments (backbone, loss, optimizer from hparams)
    restored = AudioClassifier.load_from_checkpoint(best).eval()
    assert type(restored.loss.embedding).__name__ == "ADDLoss"
    from test_models import ToyClips

    with torch.no_grad():
        torch.testing.assert_close(restored(ToyClips(24, seed=1).features), logits)


def test_resume_from_last(tiny_config, tmp_path):
    # One batch of all 24 clips per epoch: the losses are means over the batch, so the
    # shuffled order (drawn anew by the resumed process) changes only the order of sums.
    # Adam moves each weight by about lr (3e-3) per step, so a near-zero gradient's rounding
    # moves it by up to 1e-4; a lost optimizer or scheduler state moves it by a step.
    whole = ["--data.init_args.batch_size", "24"]
    run = tmp_path / "run"
    main(["fit", *_base(tiny_config, run), *whole, "--trainer.max_epochs", "1"])
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    resume = ["--trainer.max_epochs", "2", "--ckpt_path", "last"]
    main(["fit", *_base(tiny_config, run), *whole, *resume])
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert (first["epoch"], resumed["epoch"]) == (0, 1)
    assert resumed["global_step"] == 2 * first["global_step"]
    # reference: the uninterrupted two-epoch run
    main(["fit", *_base(tiny_config, tmp_path / "uninterrupted"), *whole])
    reference = torch.load(
        tmp_path / "uninterrupted" / "checkpoints" / "last.ckpt", weights_only=False
    )
    assert resumed["state_dict"].keys() == reference["state_dict"].keys()
    for name, weight in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], weight, rtol=0, atol=1e-4)


def test_last_checkpoint_is_the_final_epoch_when_validation_stops_improving(tiny_config, tmp_path):
    # lr 0: val/acc never improves after epoch 0, so best.ckpt stays at epoch 0 while
    # last.ckpt must follow every epoch (Lightning's save_last alone left it at epoch 0).
    run = tmp_path / "run"
    no_learning = ["--model.init_args.optimizer.init_args.lr", "0.0"]
    main(["fit", *_base(tiny_config, run), *no_learning, "--trainer.max_epochs", "3"])
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    assert (best["epoch"], last["epoch"]) == (0, 2)
    assert last["global_step"] == 3 * best["global_step"]


def test_diverging_training_stops_with_the_cause(tiny_config, tmp_path):
    # Adam moves every weight by about lr per step: 1e30 overflows the activations at once.
    run = tmp_path / "run"
    diverge = ["--model.init_args.optimizer.init_args.lr", "1e30", "--trainer.max_epochs", "3"]
    with pytest.raises(FloatingPointError, match=r"train loss is nan.*features are finite") as info:
        main(["fit", *_base(tiny_config, run), *diverge])
    assert "lower the learning rate" in str(info.value)
    assert "epoch 0" in str(info.value)  # stopped at once, not after three epochs of NaN


def test_programmatic_use(tiny_config, tmp_path):
    run = tmp_path / "run"
    cli = AddLightningCLI(args=_base(tiny_config, run), run=False)
    assert cli.model.num_classes == 3
    assert cli.model.class_names == ["a", "b", "c"]
    assert Path(cli.trainer.logger.log_dir) == run
    checkpoint = cli.trainer.checkpoint_callback
    assert (checkpoint.monitor, checkpoint.mode, checkpoint.filename) == ("val/acc", "max", "best")


def test_checkpoint_with_other_class_count_is_refused(tiny_config, tmp_path):
    run = tmp_path / "run"
    main(["fit", *_base(tiny_config, run), "--trainer.max_epochs", "1"])
    with pytest.raises(ValueError, match=r"head for 3 classes.*num_classes=4"):
        main(
            [
                "test",
                *_base(tiny_config, tmp_path / "other"),
                "--data.init_args.num_classes",
                "4",
                "--ckpt_path",
                str(run / "checkpoints" / "last.ckpt"),
            ]
        )


def test_print_config(tiny_config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", tiny_config, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["backbone"]["init_args"]["hidden_size"] == 32
    assert printed["checkpoint"]["filename"] == "best"


@pytest.mark.parametrize("command", ["cv", "search", "compare", "figures"])
def test_experiment_commands_are_dispatched(monkeypatch, command):
    calls = []
    fake = types.ModuleType("add_lightning.experiments.cli")
    fake.main = lambda argv: calls.append(argv) or 7
    monkeypatch.setitem(sys.modules, "add_lightning.experiments.cli", fake)
    assert main([command, "--x", "1"]) == 7
    assert calls == [[command, "--x", "1"]]


def test_console_script_reaches_the_real_experiment_commands(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing")]) == 1
    assert "add-lightning compare: error" in capsys.readouterr().err


def test_missing_dataset_root_is_reported(tmp_path):
    missing = tmp_path / "no_esc50"
    with pytest.raises(FileNotFoundError, match="no_esc50"):
        main(
            [
                *("fit", "--config", str(REPO / "configs/data/esc50.yaml")),
                *("--config", str(REPO / "configs/model/ast_tiny.yaml")),
                *("--data.init_args.dataset.init_args.root", str(missing)),
                *("--data.init_args.dataset.init_args.download", "false"),
            ]
        )


def test_offline_hub_id_is_reported(tiny_config, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"save_pretrained"):
        main(
            [
                *("fit", *_base(tiny_config, tmp_path / "run")),
                *("--model.init_args.backbone.init_args.pretrained", "nobody/no-such-ast"),
            ]
        )


def _audio_config(root: Path, cache: Path) -> str:
    """The synthetic-audio config of the cv tests with every epoch-dependent randomness on
    (shuffling, mixup, SpecAugment), so that an epoch replayed in the wrong order changes the
    weights."""
    config = yaml.safe_load(tiny_cv_config(root))
    data = config["data"]["init_args"]
    data["dataset"]["init_args"]["clips_per_class"] = 6
    data.update(batch_size=3, cache_dir=str(cache))
    data["mixup"] = {"class_path": "add_lightning.data.Mixup", "init_args": {"rate": 0.5}}
    data["spec_augment"] = {
        "class_path": "add_lightning.data.SpecAugment",
        "init_args": {"time_mask": 8},
    }
    del config["trainer"]["max_epochs"]
    return yaml.safe_dump(config)


@pytest.mark.parametrize(
    "sampling",
    [
        [],
        [
            "--data.init_args.train_batches",
            "{class_path: add_lightning.data.ClassBalancedBatches, "
            "init_args: {classes_per_batch: 3, clips_per_class: 2}}",
        ],
    ],
    ids=["shuffle", "balanced"],
)
def test_resume_with_workers_equals_an_uninterrupted_run(tmp_path, sampling):
    # With DataLoader workers the index iterator is created twice before the first batch, and
    # Lightning creates the first one (and the workers prefetch from it) before it tells the
    # sampler the resumed epoch. Reference: the same run without workers, uninterrupted.
    config = tmp_path / "audio.yaml"
    config.write_text(_audio_config(tmp_path / "synthetic", tmp_path / "cache"))

    def fit(run: str, workers: int, *extra: str) -> None:
        base = ["--config", str(config), "--trainer.default_root_dir", str(tmp_path / run)]
        main(["fit", *base, "--data.init_args.num_workers", str(workers), *sampling, *extra])

    fit("reference", 0, "--trainer.max_epochs", "3")
    fit("uninterrupted", 2, "--trainer.max_epochs", "3")
    fit("resumed", 2, "--trainer.max_epochs", "1")
    fit("resumed", 2, "--trainer.max_epochs", "3", "--ckpt_path", "last")

    expected, *others = (
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=False)
        for run in ("reference", "uninterrupted", "resumed")
    )
    for run, checkpoint in zip(("uninterrupted", "resumed"), others):
        assert checkpoint["epoch"] == expected["epoch"] == 2
        assert checkpoint["state_dict"].keys() == expected["state_dict"].keys()
        for name, weight in expected["state_dict"].items():
            assert torch.equal(checkpoint["state_dict"][name], weight), f"{run}: {name}"


def test_console_script_reports_user_errors_in_one_line(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "no_esc50"
    argv = [
        *("fit", "--config", str(REPO / "configs/data/esc50.yaml")),
        *("--config", str(REPO / "configs/model/ast_tiny.yaml")),
        *("--data.init_args.dataset.init_args.root", str(missing)),
        *("--data.init_args.dataset.init_args.download", "false"),
    ]
    monkeypatch.delenv("ADD_LIGHTNING_TRACEBACK", raising=False)
    assert console_status(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "add-lightning: error:" in line]
    assert len(errors) == 1 and "ESC50 metadata not found" in errors[0] and str(missing) in err
    assert "ADD_LIGHTNING_TRACEBACK=1" in err
    # ADD_LIGHTNING_TRACEBACK=1: the error is raised on (Python prints its traceback)
    monkeypatch.setenv("ADD_LIGHTNING_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError, match="ESC50 metadata not found") as raised:
        console_status(argv)
    assert str(missing) in str(raised.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", r"is empty \(0 bytes\)"), (b"\x80\x02garbage" * 100, "is not a PyTorch checkpoint")],
    ids=["empty", "random"],
)
def test_damaged_checkpoint_is_named(tiny_config, tmp_path, content, message):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        main(["test", *_base(tiny_config, tmp_path / "run"), "--ckpt_path", str(bad)])
    assert str(bad) in str(info.value)


def test_no_placeholder_metric_and_no_checkpoint_under_fast_dev_run(tiny_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    main(["fit", *_base(tiny_config, run), "--trainer.max_epochs", "1"])
    (events,) = run.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    assert "train/loss_epoch" in scalars and "hp_metric" not in scalars

    quick = tmp_path / "quick"
    main(["fit", *_base(tiny_config, quick), "--trainer.fast_dev_run", "true"])
    assert not (quick / "checkpoints").exists() or not any((quick / "checkpoints").iterdir())


def test_test_draws_the_class_pair_heatmaps(tiny_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    main(["fit", *_base(tiny_config, run), "--trainer.max_epochs", "1"])
    images = EventAccumulator(str(run), size_guidance={"images": 0}).Reload().Tags()["images"]
    assert images == []  # drawn by `test` alone
    main(["test", *_base(tiny_config, run), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    images = EventAccumulator(str(run), size_guidance={"images": 0}).Reload().Tags()["images"]
    assert sorted(images) == ["test/geometry/class_cv", "test/geometry/class_mean"]


def test_num_classes_contradicting_the_data_is_refused(tiny_config, tmp_path):
    arguments = ["fit", *_base(tiny_config, tmp_path / "run"), "--trainer.max_epochs", "1"]
    with pytest.raises(ValueError, match=r"data's 3 classes but got 5"):
        main([*arguments, "--model.init_args.num_classes", "5"])
    main([*arguments, "--model.init_args.num_classes", "3"])  # agreeing is fine


def test_model_arguments_replaced_by_the_checkpoint_are_named(tiny_config, tmp_path):
    run = tmp_path / "run"
    main(["fit", *_base(tiny_config, run), "--trainer.max_epochs", "1"])
    last = str(run / "checkpoints" / "last.ckpt")
    test = ["test", "--config", str(run / "config.yaml"), "--ckpt_path", last]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(test)  # the run's own config: nothing is replaced
    assert not [w for w in caught if "replaced by the checkpoint" in str(w.message)]
    wider = "--model.init_args.backbone.init_args.intermediate_size"
    with pytest.warns(UserWarning, match=r"backbone\.init_args\.intermediate_size 37 \(given 64\)"):
        main([*test, wider, "64"])
