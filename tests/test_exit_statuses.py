"""The exit statuses of the console script, one table for every command (README, "Exit statuses").

0 done; 1 a user error (a file, config value or data the command cannot use; a failed unit; a
classify input that could not be read); 2 a command line that does not parse; 75 another `cv`
holds the experiment; 130 Ctrl+C. Statuses are read in-process from ``console_main`` (a
``SystemExit`` as the process would exit with it), Ctrl+C in a subprocess with a real SIGINT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from console_runs import console_env
from console_runs import console_status as _status
from lightning.pytorch.callbacks import Callback
from tiny_runs import synthetic_dataset, tiny_run_config

from add_lightning.experiments.locks import hold_lock


class InterruptAtFirstBatch(Callback):
    """Sends this process SIGINT, as Ctrl+C in a terminal does, when training starts."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Python's own handler, which a process started from a terminal has: one started in the
        # background by a shell without job control (`cmd &` in a script, nohup) inherits SIGINT
        # ignored, and Python then leaves it ignored (the fit ran to its end, exit status 0)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("exit")
    path = folder / "tiny.yaml"
    path.write_text(tiny_run_config(synthetic_dataset(folder / "synthetic")))
    return path


def test_usage_errors_exit_2(tiny_config, tmp_path, capsys):
    config = ["--config", str(tiny_config)]
    checkpoint = ["--ckpt_path", str(tmp_path / "model.ckpt")]
    for argv, message in [
        (["fitt"], "unknown command 'fitt'"),
        (["fit", *config, "--trainer.no_such_option", "1"], "unrecognized arguments"),
        (["classify", "a.wav"], "required: ckpt_path"),
        (["classify", *checkpoint, "--top_k", "many", "a.wav"], 'key "top_k"'),
        (["export", *checkpoint, "--format", "tflite", "--output", "x"], 'key "format"'),
        (["compare", str(tmp_path), "--no-such-option"], "unrecognized arguments"),
        (["figures", str(tmp_path)], "required: --output"),
        (["cv", *config, "--output", str(tmp_path / "cv"), "--trainer.no_such_option", "1"], ""),
    ]:
        assert _status(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "cv").exists()


def test_user_errors_exit_1(tiny_config, tmp_path, capsys):
    config = ["--config", str(tiny_config)]
    missing = str(tmp_path / "missing.ckpt")
    for argv, message in [
        (["fit", *config, "--data.init_args.batch_size", "0"], "`batch_size`"),
        (["test", *config, "--ckpt_path", missing], f"{missing} (`--ckpt_path`) does not exist"),
        (["classify", "--ckpt_path", missing, "a.wav"], f"{missing} does not exist"),
        (["export", "--ckpt_path", missing, "--format", "hf", "--output", "x"], missing),
        (["compare", str(tmp_path)], "experiment.yaml does not exist"),
        (["figures", str(tmp_path / "run"), "--output", str(tmp_path / "f.png")], "does not exist"),
    ]:
        assert _status(argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, argv


def test_cv_changed_config_exits_1_and_busy_experiment_exits_75(tiny_config, tmp_path, capsys):
    output = tmp_path / "cv"
    output.mkdir()
    (output / "experiment.yaml").write_text("config: {}\nseeds: [0]\n")  # another experiment's
    cv = ["cv", "--config", str(tiny_config), "--seeds", "0", "--output", str(output)]
    assert _status(cv) == 1
    assert "--force" in capsys.readouterr().err
    with hold_lock(output):  # another launcher of this experiment is running
        assert _status(cv) == 75
    assert "Another `add-lightning cv` is running" in capsys.readouterr().err


def test_ctrl_c_exits_130(monkeypatch, tmp_path, capsys):
    import add_lightning.experiments.compare as compare

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "compare_table", interrupted)
    try:
        status = _status(["compare", str(tmp_path)])
    except KeyboardInterrupt:  # not raised on: pytest would take it for the user's Ctrl+C
        pytest.fail("the KeyboardInterrupt left console_main")
    assert status == 130
    assert capsys.readouterr().err == "add-lightning: interrupted\n"


def test_ctrl_c_during_fit_exits_130(tmp_path):
    # Lightning answers Ctrl+C with a graceful shutdown and exit status 1, as for an error.
    config = tmp_path / "interrupted.yaml"
    callback = {"class_path": f"{Path(__file__).stem}.InterruptAtFirstBatch"}
    config.write_text(
        tiny_run_config(synthetic_dataset(tmp_path / "synthetic"), callbacks=[callback])
    )
    done = subprocess.run(
        [sys.executable, "-m", "add_lightning.cli", "fit", "--config", str(config)],
        env=console_env(),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert done.returncode == 130, done.stderr[-3000:]
    assert done.stderr.endswith("add-lightning: interrupted\n")
