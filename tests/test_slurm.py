"""`add-lightning cv --launcher slurm` against a running SLURM scheduler, with the tiny model.

`.ci/slurm-up` starts a single-node cluster (2 CPUs, no accounting database); where `sbatch`
is absent or the controller does not answer, the scheduler tests are skipped. Every result is
compared with a run that did not go through SLURM: the serial `cv` of the same config on this
machine (shared, read-only), or a 2-process local DDP run.

A unit is stopped in the middle of training by :class:`HoldOnce`, a callback that waits, once,
in its second epoch (after the first epoch's ``last.ckpt``) until its job is stopped: the
test then requeues the job, or shortens its time limit, at a known point of training.
"""

from __future__ import annotations

import collections
import csv
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from console_runs import REPO, TESTS, console_env, run_console
from lightning.pytorch import Callback

from add_lightning.experiments import cli
from add_lightning.experiments.config import ExperimentConfigError
from add_lightning.experiments.slurm import UnitDevices, slurm_resources, unit_devices

_TIMEOUT_S = 900  # a guard against hanging, not a timing assertion


def _scheduler_missing() -> str | None:
    """Why the scheduler tests cannot run here, or None."""
    if shutil.which("sbatch") is None:
        return "no SLURM here (sbatch is not on PATH); .ci/slurm-up starts a single-node one"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, check=False)
    if "UP" not in ping.stdout:
        return f"the SLURM controller does not answer: {(ping.stdout + ping.stderr).strip()}"
    states = subprocess.run(
        ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, check=False
    ).stdout.split()
    if not {"idle", "mixed", "allocated", "completing"} & set(states):
        return f"no SLURM node takes jobs (sinfo: {states})"
    return None


@pytest.fixture(scope="module")
def scheduler() -> None:
    reason = _scheduler_missing()
    if reason is not None:
        pytest.skip(reason)


class HoldOnce(Callback):
    """Holds training at the first batch of the second epoch, once: writes ``marker`` (the
    job id) and waits until the process gets SIGTERM, is ended by a signal handler, or 10
    minutes passed. A run that finds ``marker`` (the resumed one) trains on."""

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch != 1 or batch_idx != 0 or self.marker.exists():
            return
        partial = self.marker.with_name(f"{self.marker.name}.partial")
        partial.write_text(os.environ.get("SLURM_JOB_ID", "local"))
        partial.replace(self.marker)  # whole when the test sees it
        deadline = time.monotonic() + 600
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.1)


# ----------------------------------------------------------------------- runs and their files


@pytest.fixture(scope="module")
def tiny_config(serial_cv) -> Path:
    """Synthetic data (3 classes x 4 clips of 0.5 s, 2 folds), a one-layer AST, CE + ADD,
    2 epochs."""
    return serial_cv["config"]


def _cv_args(config: Path, output: Path, folds=("1", "2"), seeds=("0", "1")) -> list[str]:
    return [
        *["cv", "--config", str(config), "--folds", *folds, "--seeds", *seeds],
        *["--output", str(output)],
    ]


@pytest.fixture(scope="module")
def serial(serial_cv) -> Path:
    """The serial `cv` of 2 folds x 2 seeds on this machine (conftest's serial_cv, read-only)."""
    return serial_cv["output"]


def _rows(output: Path) -> dict[tuple[str, str], dict[str, str]]:
    with (output / "results.csv").open() as stream:
        return {(row["fold"], row["seed"]): row for row in csv.DictReader(stream)}


def _job_ids(output: Path) -> set[str]:
    """The SLURM jobs of an experiment, from the names of submitit's files."""
    return {
        match.group(1)
        for path in (output / ".submitit").glob("*")
        if (match := re.match(r"(\d+)_", path.name))
    }


def _logs(output: Path) -> str:
    return "".join(path.read_text() for path in sorted((output / ".submitit").glob("*_log.err")))


def _scontrol(*args: str) -> str:
    return subprocess.run(
        ["scontrol", *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + _TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"waited {_TIMEOUT_S} s for {what}"
        time.sleep(0.2)


def _job_state(job_id: str) -> str:
    return re.search(r"JobState=(\S+)", _scontrol("show", "job", job_id)).group(1)


def _release_when_pending(job_id: str, *updates: str) -> None:
    """Once SLURM has put the job back in the queue: starts it now, not after the 2 minutes
    that SLURM holds a requeued job, with ``updates`` (``TimeLimit=10``).

    Not in the second of the requeue: the requeue revokes the job's credential, and slurmd
    refuses to start the job with a credential created in the same second as the revocation
    ("Killing non-startable batch JobId=…: Job credential revoked": the job ends FAILED
    without running). Released 0.1 s after the requeue on a loaded machine, the unit ended
    without a result. (`StartTime=now+2` instead waits for the scheduler's next pass, up to
    30 s.)
    """
    _wait_for(lambda: _job_state(job_id) == "PENDING", f"job {job_id} to be requeued")
    time.sleep(1.05 - time.time() % 1)  # into the next second of the clock
    _scontrol("update", f"JobId={job_id}", "StartTime=now", *updates)


class _Launcher(threading.Thread):
    """`cv` (``cli.main``) in a thread, while the test acts on its jobs."""

    def __init__(self, argv: list[str]) -> None:
        super().__init__(daemon=True)
        self.argv = argv
        self.status: int | None = None

    def run(self) -> None:
        self.status = cli.main(self.argv)

    def result(self) -> int | None:
        self.join(_TIMEOUT_S)
        return self.status


def _cancel(output: Path) -> None:
    """Cancels the jobs of an experiment that still run 30 s from now (a failed test leaves
    nothing in the queue; a finished job's processes are given the time to exit)."""
    jobs = _job_ids(output)
    deadline = time.monotonic() + 30
    while jobs and time.monotonic() < deadline:
        listed = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%F %i"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        jobs &= set(listed)
        time.sleep(0.5)
    for job_id in jobs:
        subprocess.run(["scancel", job_id], check=False, capture_output=True)


@pytest.fixture
def cancel_jobs():
    """Cancels the SLURM jobs of the experiments in the list at the end of a test."""
    outputs: list[Path] = []
    yield outputs
    for output in outputs:
        _cancel(output)


@pytest.fixture
def importable_tests(monkeypatch) -> None:
    """Jobs inherit the environment: they import :class:`HoldOnce` from this folder."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(REPO)]))


def _held_job(launcher: _Launcher, marker: Path) -> str:
    """The id of the job that :class:`HoldOnce` holds, once it does."""
    _wait_for(lambda: marker.exists() or not launcher.is_alive(), "the unit to reach epoch 2")
    assert marker.exists(), f"`cv` ended (status {launcher.status}) before its unit was held"
    job_id = marker.read_text()
    assert job_id.isdigit(), f"the held unit runs outside SLURM ({job_id!r})"
    return job_id


def _held(config: Path, output: Path, marker: Path) -> list[str]:
    callback = ["--trainer.callbacks+=test_slurm.HoldOnce", f"--trainer.callbacks.marker={marker}"]
    return [*_cv_args(config, output, folds=["1"], seeds=["0"]), "--launcher", "slurm", *callback]


# ------------------------------------------------------------------------------- the job array


@pytest.fixture(scope="module")
def slurm_array(scheduler, tiny_config, tmp_path_factory):
    """The console's `cv --launcher slurm --max-parallel 2` of the serial run's 4 units, with
    no resource flags (a CPU config on a cluster without GPUs), and its job array's id."""
    output = tmp_path_factory.mktemp("slurm_array") / "array"
    args = [*_cv_args(tiny_config, output), "--launcher", "slurm", "--max-parallel", "2"]
    try:
        result = run_console(args, timeout=_TIMEOUT_S, env=console_env())
    finally:
        _cancel(output)
    (array,) = _job_ids(output)
    return output, result, array


def test_job_array_gives_the_serial_results_with_its_throttle(serial, slurm_array):
    output, _, array = slurm_array
    assert (output / "results.csv").read_bytes() == (serial / "results.csv").read_bytes()
    # SLURM's record of the array (kept for MinJobAge after it ended): 4 tasks, 2 at a time.
    records = _scontrol("show", "job", array)
    assert set(re.findall(r"ArrayTaskThrottle=(\d+)", records)) == {"2"}
    assert sorted(re.findall(r"ArrayTaskId=(\d+)", records)) == ["0", "1", "2", "3"]
    script = (output / ".submitit" / f"{array}_submission.sh").read_text()
    assert "#SBATCH --array=0-3%2" in script and "gpus" not in script  # no GPUs on a CPU run


def test_cluster_without_accounting_logs_each_line_once(slurm_array):
    _, result, _ = slurm_array
    accounting = subprocess.run(["sacct"], capture_output=True, text=True, check=False)
    if accounting.returncode == 0:
        pytest.skip("this cluster has an accounting database")
    lines = result.stderr.splitlines()
    assert not [line for line in lines if "sacct" in line]
    repeated = {line: n for line, n in collections.Counter(lines).items() if n > 1}
    assert repeated == {}
    assert sum("finished in" in line for line in lines) == 4  # the progress lines, once each
    assert "submitit" not in result.stdout  # the table only: no second copy of the log


# ---------------------------------------------------------------------- requeue and time limit


def test_requeued_unit_resumes_from_its_checkpoint(
    scheduler, serial, tiny_config, tmp_path, cancel_jobs, importable_tests
):
    output, marker = tmp_path / "requeued", tmp_path / "held"
    cancel_jobs.append(output)
    launcher = _Launcher(_held(tiny_config, output, marker))
    launcher.start()
    job_id = _held_job(launcher, marker)
    assert (output / "fold1_seed0" / "checkpoints" / "last.ckpt").is_file()
    _scontrol("requeue", job_id)  # as SLURM does when it preempts the job
    _release_when_pending(job_id)
    assert launcher.result() == 0
    assert "Resuming fold1_seed0 from" in _logs(output)
    assert _rows(output)[("1", "0")] == _rows(serial)[("1", "0")]


def test_unit_at_its_time_limit_is_requeued_and_resumes(
    scheduler, serial, tiny_config, tmp_path, cancel_jobs, importable_tests
):
    output, marker = tmp_path / "timed_out", tmp_path / "held"
    cancel_jobs.append(output)
    launcher = _Launcher([*_held(tiny_config, output, marker), "--slurm-time", "10"])
    launcher.start()
    job_id = _held_job(launcher, marker)
    assert "TimeLimit=00:10:00" in _scontrol("show", "job", job_id)  # --slurm-time
    # The limit comes within 2 minutes: SLURM sends the warning signal (USR2, 90 s before it),
    # submitit calls the unit's checkpoint() and requeues the job.
    hours, minutes, seconds = re.search(
        r"RunTime=(\d+):(\d+):(\d+)", _scontrol("show", "job", job_id)
    ).groups()
    ran_s = 3600 * int(hours) + 60 * int(minutes) + int(seconds)
    _scontrol("update", f"JobId={job_id}", f"TimeLimit={ran_s // 60 + 2}")
    _release_when_pending(job_id, "TimeLimit=10")
    assert launcher.result() == 0
    logs = _logs(output)
    assert "Caught signal SIGUSR2" in logs and "timed-out" in logs
    assert "out of time: requeued" in logs and "Resuming fold1_seed0 from" in logs
    assert _rows(output)[("1", "0")] == _rows(serial)[("1", "0")]


def test_cancelled_unit_is_a_failure_with_its_log(
    scheduler, tiny_config, tmp_path, cancel_jobs, importable_tests, capsys
):
    """A job that ends without a result (no accounting to ask about it) fails its unit."""
    output, marker = tmp_path / "cancelled", tmp_path / "held"
    cancel_jobs.append(output)
    launcher = _Launcher(_held(tiny_config, output, marker))
    launcher.start()
    job_id = _held_job(launcher, marker)
    subprocess.run(["scancel", job_id], check=True)
    assert launcher.result() == 1
    err = capsys.readouterr().err
    assert f"Unit fold1_seed0 ended without a result (SLURM job {job_id}); see its log" in err
    assert "CANCELLED AT" in (output / ".submitit" / f"{job_id}_0_log.err").read_text()


# ------------------------------------------------------------------------- a unit of 2 tasks


def test_ddp_unit_runs_as_one_job_of_two_tasks(scheduler, tiny_config, tmp_path, cancel_jobs):
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    local = tmp_path / "local"
    assert cli.main([*_cv_args(tiny_config, local, ["1"], ["0"]), *ddp]) == 0  # 2 processes
    output = tmp_path / "slurm"
    cancel_jobs.append(output)
    assert (
        cli.main([*_cv_args(tiny_config, output, ["1"], ["0"]), *ddp, "--launcher", "slurm"]) == 0
    )
    (job_id,) = _job_ids(output)
    script = (output / ".submitit" / f"{job_id}_submission.sh").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "gpus" not in script
    for rank in (0, 1):  # each task ran the unit and wrote its result
        assert (output / ".submitit" / f"{job_id}_{rank}_result.pkl").is_file()
    assert _rows(output)[("1", "0")] == _rows(local)[("1", "0")]


# -------------------------------------------------------- resources (no scheduler needed)


@pytest.mark.parametrize(
    ("trainer", "gpus_per_unit", "expected"),
    [
        ({"accelerator": "cpu", "devices": 1}, None, (None, 1)),
        ({"accelerator": "cpu", "devices": 2, "strategy": "ddp"}, None, (None, 2)),
        ({"accelerator": "gpu", "devices": 2}, None, (2, 2)),
        ({"accelerator": "cuda", "devices": "0,1"}, None, (2, 2)),
        ({"accelerator": "gpu", "devices": [0, 1, 2]}, None, (3, 3)),
        ({"accelerator": "auto", "devices": "auto"}, None, (1, 1)),
        ({}, None, (1, 1)),  # Lightning's defaults: auto, auto
        ({"accelerator": "gpu", "devices": -1}, 4, (4, 4)),  # all of the 4 GPUs given
        ({"accelerator": "gpu", "devices": 1}, 2, (2, 1)),  # a GPU more than used: allowed
        ({"accelerator": "cpu", "devices": 1}, 1, (1, 1)),  # the flag wins
    ],
    ids=[
        "cpu",
        "cpu-ddp",
        "gpu-2",
        "cuda-list-str",
        "gpu-list",
        "auto",
        "defaults",
        "all-gpus-flag",
        "more-gpus-flag",
        "cpu-gpu-flag",
    ],
)
def test_resources_follow_the_trainer_config(trainer, gpus_per_unit, expected):
    resources = slurm_resources(unit_devices({"trainer": trainer}), {}, gpus_per_unit)
    assert (resources["gpus_per_node"], resources["tasks_per_node"]) == expected
    assert resources["nodes"] == 1


@pytest.mark.parametrize(
    ("devices", "parameters", "gpus_per_unit", "match"),
    [
        (UnitDevices(True, 2, 1), {}, 1, "at least 2 GPU"),
        (UnitDevices(False, 2, 1), {"tasks_per_node": 1}, None, "tasks_per_node 2"),
        (UnitDevices(True, 1, 1), {"slurm_ntasks_per_node": 4}, None, "tasks_per_node 1"),
        (UnitDevices(True, 1, 2), {"nodes": 1}, None, "nodes 2"),
    ],
    ids=["fewer-gpus", "fewer-tasks", "more-tasks", "nodes"],
)
def test_resources_that_would_hang_are_refused(devices, parameters, gpus_per_unit, match):
    with pytest.raises(ExperimentConfigError, match=match):
        slurm_resources(devices, parameters, gpus_per_unit)


def test_mismatch_is_refused_before_submission(tiny_config, tmp_path, capsys):
    slurm_config = tmp_path / "slurm.yaml"
    slurm_config.write_text("tasks_per_node: 1\n")
    output = tmp_path / "out"
    argv = [*_cv_args(tiny_config, output, ["1"], ["0"]), "--launcher", "slurm"]
    argv += ["--slurm-config", str(slurm_config), "--trainer.devices", "2"]
    assert cli.main(argv) == 1
    assert "error: Expected tasks_per_node 2 (one SLURM task per device" in capsys.readouterr().err
    assert not output.exists()  # nothing submitted, nothing written


def test_sweep_members_needing_other_resources_are_refused(tiny_config, tmp_path, capsys):
    output = tmp_path / "sweep"
    argv = [*_cv_args(tiny_config, output, ["1"], ["0"]), "--launcher", "slurm"]
    assert cli.main([*argv, "--grid", "trainer.devices=1,2"]) == 1
    err = capsys.readouterr().err
    assert "error: Expected the experiments of one command to need the same SLURM resources" in err
    assert "'tasks_per_node': 1" in err and "'tasks_per_node': 2" in err
    assert not (output / ".submitit").exists()  # nothing submitted
