"""Waveform mode: WaveformClipDataset, collate_waveforms, WaveformDataModule, and a tiny WavLM
trained end to end through the console script (cv on the IEMOCAP layout, 2-process DDP)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
import yaml
from console_runs import console_output, run_console
from test_backbone_hf_audio import TINY
from test_data_datasets import make_iemocap
from transformers import Wav2Vec2FeatureExtractor

from add_lightning.checkpoint import PIPELINE_KEY
from add_lightning.cli import main
from add_lightning.data import IEMOCAP, AudioDataModule, WaveformDataModule
from add_lightning.data.augment import Mixup
from add_lightning.data.clip import Clip
from add_lightning.data.pipeline import InputPipeline, WaveformPipeline
from add_lightning.data.waveform_dataset import WaveformClipDataset, collate_waveforms
from add_lightning.experiments.compare import describe_experiment
from add_lightning.inference import (
    TrainedModel,
    concat_inputs,
    load_trained_model,
)
from add_lightning.models import AudioClassifier, HFAudioEncoder
from add_lightning.models.classifier import BACKBONE_SOURCE_KEY

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
RATE = 16000


def _write(path: Path, samples: int, seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    waveform = np.random.default_rng(seed).uniform(-0.5, 0.5, samples).astype(np.float32)
    soundfile.write(path, waveform, RATE, subtype="FLOAT")
    return waveform


@pytest.fixture(scope="module")
def iemocap_root(tmp_path_factory) -> Path:
    """The IEMOCAP layout of test_data_datasets with utterances of 0.1 to 0.4 s."""
    root = tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release"
    make_iemocap(root)
    for index, path in enumerate(sorted(root.rglob("*.wav"))):
        _write(path, 1600 + 300 * (index % 17), seed=index)
    return root


def test_collate_pads_and_masks():
    items = [
        {"waveform": torch.tensor([1.0, 2.0, 3.0]), "target": torch.tensor(0), "clip_id": "a"},
        {"waveform": torch.tensor([4.0]), "target": torch.tensor(2), "clip_id": "b"},
    ]
    batch = collate_waveforms(items)
    assert torch.equal(batch["features"], torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]]))
    assert torch.equal(batch["padding_mask"], torch.tensor([[0, 0, 0], [0, 1, 1]]).bool())
    assert torch.equal(batch["lengths"], torch.tensor([3, 1]))
    assert torch.equal(batch["target"], torch.tensor([0, 2]))
    assert batch["clip_id"] == ["a", "b"]


def test_evaluation_items_are_whole_and_training_items_cropped(tmp_path):
    waveforms = [_write(tmp_path / f"{i}.wav", n, seed=i) for i, n in enumerate((5000, 800))]
    clips = [Clip(tmp_path / f"{i}.wav", i, str(i)) for i in range(2)]
    evaluation = WaveformClipDataset(clips, 2, max_samples=1000)
    for index, reference in enumerate(waveforms):
        np.testing.assert_array_equal(evaluation[index]["waveform"].numpy(), reference)
    train = WaveformClipDataset(clips, 2, max_samples=1000, train=True, seed=3)
    crops = []
    for epoch in range(3):
        train.set_epoch(epoch)
        crop = train[0]["waveform"].numpy()
        assert crop.shape == (1000,)
        start = int(np.flatnonzero(waveforms[0] == crop[0])[0])  # a contiguous slice
        np.testing.assert_array_equal(crop, waveforms[0][start : start + 1000])
        crops.append(start)
        np.testing.assert_array_equal(train[0]["waveform"].numpy(), crop)  # (seed, epoch, index)
    assert len(set(crops)) > 1
    np.testing.assert_array_equal(train[1]["waveform"].numpy(), waveforms[1])  # shorter: whole


def test_mixup_mixes_waveforms(tmp_path):
    waveforms = [_write(tmp_path / f"{i}.wav", n, seed=i) for i, n in enumerate((3000, 2000))]
    clips = [Clip(tmp_path / f"{i}.wav", i, str(i)) for i in range(2)]
    dataset = WaveformClipDataset(clips, 2, train=True, mixup=Mixup(rate=1.0))
    item = dataset[0]
    lam = float(item["target"][0])
    assert 0.0 < lam < 1.0 and float(item["target"].sum()) == pytest.approx(1.0)
    other = np.zeros(3000, dtype=np.float64)
    other[:2000] = waveforms[1]
    expected = lam * waveforms[0].astype(np.float64) + (1 - lam) * other
    np.testing.assert_allclose(item["waveform"].numpy(), expected, atol=1e-6)


def test_datamodule_batches_and_pipeline(iemocap_root):
    data = WaveformDataModule(IEMOCAP(str(iemocap_root)), fold=1, max_duration=0.15, batch_size=4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["features"].shape[0] == 4 and batch["features"].shape[1] <= 2400
    assert torch.equal(batch["lengths"], (~batch["padding_mask"]).sum(dim=1))
    test = next(iter(data.test_dataloader()))
    clips = data.test_dataloader().dataset.clips[:4]
    assert test["lengths"].tolist() == [soundfile.info(clip.path).frames for clip in clips]
    assert test["features"].shape[1] == int(test["lengths"].max())
    state = data.pipeline.to_state()
    waveform = {key: state[key] for key in ("sample_rate", "max_duration")}
    assert waveform == {"sample_rate": RATE, "max_duration": 0.15}
    assert state["class_names"] == ["ang", "hap", "neu", "sad"]
    data.use_pipeline(InputPipeline.from_state(state))  # its own pipeline is accepted
    with pytest.raises(ValueError, match="fbank"):
        data.use_pipeline(AudioDataModule(IEMOCAP(str(iemocap_root)), fold=1).pipeline)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_duration": 0.0}, "`max_duration`"), ({"sample_rate": 0}, "`sample_rate`")],
)
def test_datamodule_bad_arguments(iemocap_root, kwargs, message):
    with pytest.raises(ValueError, match=message):
        WaveformDataModule(IEMOCAP(str(iemocap_root)), **kwargs)


def _config(root: Path, pooling: str = "weighted", batch_size: int = 4, **trainer) -> dict:
    return {
        "data": {
            "class_path": "add_lightning.data.WaveformDataModule",
            "init_args": {
                "dataset": {
                    "class_path": "add_lightning.data.IEMOCAP",
                    "init_args": {"root": str(root)},
                },
                "fold": 1,
                "max_duration": 0.2,
                "batch_size": batch_size,
            },
        },
        "model": {
            "class_path": "add_lightning.models.AudioClassifier",
            "init_args": {
                "backbone": {
                    "class_path": "add_lightning.models.HFAudioEncoder",
                    "init_args": {"config": TINY["wavlm"], "pooling": pooling},
                },
                "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}},
            },
        },
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 1,
            "deterministic": True,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            **trainer,
        },
    }


def test_cv_on_iemocap_with_a_tiny_wavlm(iemocap_root, tmp_path):
    config = tmp_path / "wavlm.yaml"
    config.write_text(yaml.safe_dump(_config(iemocap_root)))
    output = tmp_path / "cv"
    argv = ["cv", "--config", str(config), "--config", str(REPO / "configs/loss/add.yaml")]
    assert main([*argv, "--folds", "1", "2", "--seeds", "0", "--output", str(output)]) == 0
    for fold in (1, 2):
        run = output / f"fold{fold}_seed0"
        metrics = json.loads((run / "test_metrics.json").read_text())["metrics"]
        assert np.isfinite(metrics["test/geometry/mu_p"])
        with np.load(run / "test_embeddings.npz") as exported:
            assert exported["embeddings"].shape == (5, 32)  # one session: 5 utterances
            # test/acc against a reference: the exported logits of the same model, scored here
            hits = exported["logits"].argmax(axis=1) == exported["targets"]
        assert metrics["test/acc"] == pytest.approx(hits.mean(), abs=1e-6)
        checkpoint = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
        assert checkpoint[PIPELINE_KEY]["max_duration"] == 0.2
    assert "test/acc" in (output / "results.csv").read_text()
    assert main(["compare", str(output)]) == 0
    assert main(["figures", str(output / "fold1_seed0"), "--output", str(tmp_path / "f.png")]) == 0
    experiment = yaml.safe_load((output / "experiment.yaml").read_text())
    assert describe_experiment(experiment).backbone == "wavlm"


def test_layer_weights_are_logged_once_per_epoch(iemocap_root, tmp_path):
    from add_lightning.lightning_cli import AddLightningCLI

    config = tmp_path / "wavlm.yaml"
    config.write_text(yaml.safe_dump(_config(iemocap_root, limit_train_batches=2)))
    args = ["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run")]
    cli = AddLightningCLI(args=args[1:], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    metrics = cli.trainer.callback_metrics
    weights = [float(metrics[f"train/layer_weights/{i}"]) for i in range(3)]
    reference = torch.softmax(cli.model.backbone.layer_weights.detach().double(), dim=0)
    np.testing.assert_allclose(weights, reference.numpy(), atol=1e-6)
    assert max(weights) != min(weights)  # they trained


def _scalars(run: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted(run.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values += [event.value for event in accumulator.Scalars(tag)]
    return values


def test_two_process_ddp_matches_the_single_process_loss(iemocap_root, tmp_path):
    """Full-batch steps (20 training clips: 1 x 20, or 2 processes x 10) of variable length
    give the same losses, since each clip's embedding does not depend on its batch."""
    losses = {}
    for name, batch_size, devices in (("single", 20, 1), ("ddp", 10, 2)):
        config = tmp_path / f"{name}.yaml"
        trainer = {"max_epochs": 3, "devices": devices, "num_sanity_val_steps": 0}
        if devices == 2:
            trainer["strategy"] = "ddp"
        config.write_text(yaml.safe_dump(_config(iemocap_root, "mean", batch_size, **trainer)))
        run = tmp_path / name
        fit = ["fit", "--config", str(config), "--trainer.default_root_dir", str(run)]
        if devices == 1:
            assert main(fit) == 0
        else:
            run_console(fit)  # the ranks are processes that the console script starts
        # one step per epoch: the epoch value is the step's mean over both processes (step
        # values are each process's own, not synchronised)
        losses[name] = _scalars(run, "train/loss_epoch")
    assert len(losses["single"]) == 3
    np.testing.assert_allclose(losses["ddp"], losses["single"], rtol=1e-4)
    assert losses["single"][0] != losses["single"][-1]  # it trained


def _alone(model: AudioClassifier, path: Path) -> np.ndarray:
    """Reference: a file's probabilities from the model applied to it alone, as evaluation
    reads it (soundfile, channels averaged, resampled to 16 kHz)."""
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    waveform = torch.from_numpy(samples.mean(axis=1))
    if rate != RATE:
        waveform = torchaudio.functional.resample(waveform, rate, RATE)
    with torch.no_grad():
        return model.head(model.backbone(waveform[None])).softmax(dim=-1)[0].numpy()


def test_predict_and_classify_a_trained_wavlm(iemocap_root, tmp_path, capsys):
    config = tmp_path / "wavlm.yaml"
    config.write_text(yaml.safe_dump(_config(iemocap_root, limit_train_batches=1)))
    run = tmp_path / "run"
    assert main(["fit", "--config", str(config), "--trainer.default_root_dir", str(run)]) in (
        0,
        None,
    )
    checkpoint = str(run / "checkpoints" / "last.ckpt")
    main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", checkpoint])
    with np.load(run / "predictions.npz") as predictions:
        assert predictions["embeddings"].shape == (5, 32)  # the test session
        assert np.isfinite(predictions["embeddings"]).all()
        predicted = dict(zip(predictions["clip_ids"], predictions["logits"]))

    # the test session's 5 files (0.1 to 0.4 s at 16 kHz), then other rates, stereo, int16
    data = WaveformDataModule(IEMOCAP(str(iemocap_root)), fold=1)
    data.setup("predict")
    clips = data.predict_dataloader().dataset.clips
    files = [clip.path for clip in clips]
    rng = np.random.default_rng(0)
    for name, rate, shape, subtype in (
        ("stereo.wav", 22050, (5000, 2), "FLOAT"),
        ("low.flac", 8000, (1900,), "PCM_16"),
        ("long.wav", 44100, (20000,), "PCM_16"),
    ):
        soundfile.write(tmp_path / name, rng.uniform(-0.5, 0.5, shape), rate, subtype=subtype)
        files.append(tmp_path / name)
    output = tmp_path / "results.json"
    # 3 files per forward pass: each pass pads clips of different lengths
    arguments = ["classify", "--ckpt_path", checkpoint, *map(str, files), "--batch_size", "3"]
    done = console_output([*arguments, "--output", str(output), "--top_k", "2"])
    assert done.returncode == 0, done.stderr
    assert f"classified {len(files)} of {len(files)} files" in done.stderr
    assert len(done.stdout.strip().splitlines()) == len(files)
    results = json.loads(output.read_text())
    names = ["ang", "hap", "neu", "sad"]
    assert results["class_names"] == names
    model = AudioClassifier.load_from_checkpoint(checkpoint).eval()
    for path, row in zip(files, results["clips"], strict=True):
        assert row["path"] == str(path) and row["error"] is None and row["num_windows"] == 1
        got = np.array([row["probabilities"][name] for name in names])
        np.testing.assert_allclose(got, _alone(model, path), atol=1e-5)
        assert row["top_k"][0]["label"] == names[int(got.argmax())]
    for clip, row in zip(clips, results["clips"]):  # predict: another path, same scores
        expected = torch.from_numpy(predicted[clip.clip_id]).softmax(dim=-1).numpy()
        np.testing.assert_allclose(
            [row["probabilities"][name] for name in names], expected, atol=1e-5
        )

    # 12 samples, under one encoder frame (kernels 10, 3, strides 5, 2: 20 samples): named,
    # skipped, exit status 1
    soundfile.write(tmp_path / "short.wav", np.zeros(12), RATE)
    assert main(["classify", "--ckpt_path", checkpoint, str(tmp_path / "short.wav")]) == 1
    assert "short.wav: Expected a clip of at least 20 samples" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"`--hop_frames` applies to fbank models"):
        main(["classify", "--ckpt_path", checkpoint, "--hop_frames", "8", str(files[0])])
    export = ["export", "--ckpt_path", checkpoint, "--format", "onnx"]
    with pytest.raises(ValueError, match=r"this is a waveform model \(HFAudioEncoder\)"):
        main([*export, "--output", str(tmp_path / "model.onnx")])
    assert not (tmp_path / "model.onnx").exists()


def test_concat_inputs_pads_the_clips_to_the_longest():
    batch = concat_inputs([torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[4.0], [5.0]])])
    assert torch.equal(batch, torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [5.0, 0.0, 0.0]]))
    windows = [torch.ones(2, 4, 3), torch.zeros(1, 4, 3)]  # fbank windows: a concatenation
    assert torch.equal(concat_inputs(windows), torch.cat(windows))


def test_classify_a_whisper_model_on_a_padded_batch():
    """Whisper pads every clip to its fixed input itself: a clip's scores in a batch of others
    (shorter, longer than that 1 s input) are those of the model applied to it alone."""
    torch.manual_seed(0)
    model = AudioClassifier(HFAudioEncoder(config=TINY["whisper"]), num_classes=3).eval()
    trained = TrainedModel(model, WaveformPipeline(RATE, class_names=["a", "b", "c"]))
    generator = torch.Generator().manual_seed(0)
    clips = [(0.1 * torch.randn(n, generator=generator), n) for n in (3000, 9000, 20000)]
    inputs = [trained.pipeline.inputs(waveform, RATE) for waveform, _ in clips]
    probabilities, _ = trained.score_windows(
        concat_inputs([windows for windows, _ in inputs]),
        num_frames=torch.cat([lengths for _, lengths in inputs]),
    )
    for (waveform, _), batched in zip(clips, probabilities):
        with torch.no_grad():
            alone = model.head(model.backbone(waveform[None])).softmax(dim=-1)[0]
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(trained.classify(waveform, RATE).probabilities, alone)
    with pytest.raises(ValueError, match="`hop_frames` to be None for a waveform model"):
        trained.classify(clips[0][0], RATE, hop_frames=10)


def test_data_at_another_rate_than_the_encoder_is_refused(iemocap_root, tmp_path):
    from add_lightning.lightning_cli import AddLightningCLI

    config = tmp_path / "wavlm.yaml"
    config.write_text(yaml.safe_dump(_config(iemocap_root)))
    args = ["--config", str(config), "--data.init_args.sample_rate", "8000"]
    args += ["--trainer.default_root_dir", str(tmp_path / "run")]
    with pytest.raises(ValueError, match=r"`sample_rate` 8000 to equal the backbone's 16000"):
        AddLightningCLI(args=args, run=False)


def _waveforms() -> tuple[torch.Tensor, torch.Tensor]:
    """Two clips of 0.3 and 0.15 s, the second zero-padded, and the padding mask."""
    waveforms = 0.1 * torch.randn(2, 4800, generator=torch.Generator().manual_seed(7))
    padding_mask = torch.arange(4800) >= torch.tensor([4800, 2400])[:, None]
    return waveforms.masked_fill(padding_mask, 0.0), padding_mask


@pytest.fixture(scope="module")
def pretrained_wavlm_run(iemocap_root, tmp_path_factory) -> dict:
    """`fit` (console script) of a WavLM started from a `save_pretrained` folder whose feature
    extractor does not normalise (the family's default does); then the folder is deleted.

    Recorded before the deletion: the model as the training's config builds it (from the folder)
    with the trained weights, its logits on fixed waveforms, and the weights of an
    uninterrupted two-epoch run (the reference of the resumed one).
    """
    from add_lightning.lightning_cli import AddLightningCLI

    folder = tmp_path_factory.mktemp("pretrained_wavlm")
    source = folder / "wavlm_pretrained"
    torch.manual_seed(1)
    HFAudioEncoder(config=TINY["wavlm"]).model.save_pretrained(source)
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(source)
    configs = {}
    for epochs in (1, 2):
        config = _config(iemocap_root, limit_train_batches=1, max_epochs=epochs)
        backbone = config["model"]["init_args"]["backbone"]["init_args"]
        backbone.pop("config")
        backbone["pretrained"] = str(source)
        configs[epochs] = folder / f"wavlm_{epochs}.yaml"
        configs[epochs].write_text(yaml.safe_dump(config))
    run = folder / "run"
    assert main(["fit", "--config", str(configs[1]), "--trainer.default_root_dir", str(run)]) == 0
    checkpoint = run / "checkpoints" / "last.ckpt"

    args = ["--config", str(configs[1]), "--trainer.default_root_dir", str(folder / "x")]
    model = AddLightningCLI(args=args, run=False).model
    assert model.backbone.normalize is False  # the folder's setting, read from the folder
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    model.eval()
    with torch.no_grad():
        logits = model(*_waveforms())

    uninterrupted = ["--config", str(configs[2]), "--trainer.default_root_dir", str(folder / "2")]
    assert main(["fit", *uninterrupted]) == 0
    two_epochs = torch.load(folder / "2" / "checkpoints" / "last.ckpt", weights_only=True)
    shutil.rmtree(source)
    return {
        "source": source,
        "run": run,
        "checkpoint": checkpoint,
        "model": model,
        "logits": logits,
        "two_epochs": two_epochs,
    }


def test_speech_encoder_checkpoint_loads_without_its_source(pretrained_wavlm_run, monkeypatch):
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    run = pretrained_wavlm_run
    checkpoint = torch.load(run["checkpoint"], weights_only=True)
    stored = checkpoint["hyper_parameters"]["backbone"]["init_args"]
    assert stored["pretrained"] is None and stored["normalize"] is False
    assert stored["config"]["model_type"] == "wavlm"
    assert stored["config"]["num_buckets"] == TINY["wavlm"]["num_buckets"]
    assert stored["feature_extractor"]["do_normalize"] is False
    assert checkpoint[BACKBONE_SOURCE_KEY]["init_args"]["pretrained"] == str(run["source"])

    def offline(*args, **kwargs):
        raise AssertionError(f"from_pretrained{args} called while loading a checkpoint")

    for loader in (AutoConfig, AutoFeatureExtractor, AutoModel):
        monkeypatch.setattr(loader, "from_pretrained", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_trained_model(run["checkpoint"]).model
    assert loaded.backbone.normalize is False
    with torch.no_grad():
        torch.testing.assert_close(loaded(*_waveforms()), run["logits"], rtol=0, atol=1e-6)
        model = AudioClassifier.load_from_checkpoint(run["checkpoint"]).eval()
        torch.testing.assert_close(model(*_waveforms()), run["logits"], rtol=0, atol=1e-6)


def test_classify_a_speech_encoder_without_its_source(pretrained_wavlm_run, tmp_path):
    run = pretrained_wavlm_run
    files = [tmp_path / "a.wav", tmp_path / "b.flac"]
    _write(files[0], 4000, seed=11)
    soundfile.write(files[1], _write(tmp_path / "c.wav", 2500, seed=12), RATE)
    output = tmp_path / "results.json"
    arguments = ["classify", "--ckpt_path", str(run["checkpoint"]), *map(str, files)]
    done = console_output([*arguments, "--batch_size", "2", "--output", str(output)])
    assert done.returncode == 0, done.stderr
    assert "classified 2 of 2 files" in done.stderr
    for path, row in zip(files, json.loads(output.read_text())["clips"], strict=True):
        assert row["error"] is None
        got = [row["probabilities"][name] for name in ("ang", "hap", "neu", "sad")]
        np.testing.assert_allclose(got, _alone(run["model"], path), atol=1e-6)


def test_fit_resumes_a_speech_encoder_without_its_source(pretrained_wavlm_run, tmp_path):
    # a copy of the shared run: resuming rewrites its last.ckpt, which the other tests read
    run = shutil.copytree(pretrained_wavlm_run["run"], tmp_path / "run")
    args = ["fit", "--config", str(run / "config.yaml"), "--trainer.default_root_dir", str(run)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 0
    # the stored encoder replaces the config's `pretrained` folder without a warning
    assert not [w for w in caught if "replaced by the checkpoint's" in str(w.message)]
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    reference = pretrained_wavlm_run["two_epochs"]
    assert resumed["epoch"] == reference["epoch"] == 1
    assert resumed["global_step"] == reference["global_step"]
    assert resumed["state_dict"].keys() == reference["state_dict"].keys()
    for name, weight in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], weight, rtol=0, atol=1e-6)
    source = resumed[BACKBONE_SOURCE_KEY]["init_args"]["pretrained"]
    assert source == str(pretrained_wavlm_run["source"])


def test_waveform_pipeline_is_parsed_or_named_damaged():
    stored = {
        "kind": "waveform",
        "sample_rate": 16000,
        "max_duration": 6,
        "class_names": ["a", "b"],
    }
    parsed = InputPipeline.from_state(stored, "x.ckpt")
    assert isinstance(parsed, WaveformPipeline)
    assert (parsed.sample_rate, parsed.max_duration, list(parsed.class_names)) == (
        16000,
        6.0,
        ["a", "b"],
    )
    for damaged in (
        {"kind": "waveform", "class_names": ["a"]},
        {"sample_rate": 16000, "class_names": ["a"]},
        {"kind": "waveform", "sample_rate": 16000},
    ):
        with pytest.raises(ValueError, match=r"stored in x\.ckpt is damaged"):
            InputPipeline.from_state(damaged, "x.ckpt")
