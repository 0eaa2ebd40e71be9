"""A submitit job stopped by its scheduler is requeued and continues from its own checkpoint.
Under hydra/launcher=submitit_local the job gets the signal SLURM sends before the time limit
(`--signal=USR2@signal_delay_s`) or on preemption, and submitit's local controller restarts it,
as SLURM would; a job stopped by SIGTERM (`scancel`) is not requeued and resumes when the sweep
is run again. Either way the finished run must equal one left alone."""
import csv
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aexp.errors import Interrupted
from aexp.run.faults import StopSignals
from aexp.jobs import MARKER
from conftest import ROOT, aexp

EPOCHS = 5
RUN = [f"train.epochs={EPOCHS}", "dataset.n_train=3000", "dataset.n_val=100", "train.batch_size=16",
       "frames.probe_size=50", "device=cpu"]
SWEEP = ["train", "-m", "hydra/launcher=submitit_local", *RUN]


def job_processes(sweep: Path) -> list[int]:
    """Process ids of the submitit job processes working for `sweep` (its folder is unique)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in cmd and any(str(sweep).encode() in c for c in cmd):
            found.append(int(proc.name))
    return found


def wait_for(predicate, timeout=180, what=""):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def losses(run: Path) -> list[tuple[float, float]]:
    return [(float(r["train_loss"]), float(r["val_loss"])) for r in csv.DictReader(open(run / "metrics.csv"))]


@pytest.fixture
def submitit_handler(monkeypatch):
    """As inside a submitit job: SUBMITIT_EXECUTOR set, and submitit's handler on USR2 (here one
    that records its calls, as submitit's would requeue and exit)."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    yield calls
    signal.signal(signal.SIGUSR2, previous)


def test_requeue_signal_waits_for_the_checkpoint_then_goes_to_submitit(submitit_handler):
    with pytest.raises(Interrupted):
        with StopSignals() as stop:
            signal.raise_signal(signal.SIGUSR2)
            assert stop.requested() and submitit_handler == []   # not yet: the run saves first
            raise Interrupted("stopped by SIGUSR2", stop.signum)
    assert submitit_handler == [signal.SIGUSR2]


def test_sigterm_is_not_handed_to_submitit(submitit_handler):
    # `scancel` sends SIGTERM: the run saves and stops, and the job is not requeued.
    with pytest.raises(Interrupted):
        with StopSignals() as stop:
            signal.raise_signal(signal.SIGTERM)
            assert stop.requested()
            raise Interrupted("stopped by SIGTERM", stop.signum)
    assert submitit_handler == []


def launch_and_signal(sweep: Path, signum) -> tuple[int, str]:
    """Start a one-job submitit_local sweep, send `signum` to the job once its first epoch is
    saved (mid-run), and wait for the sweep: (exit code, output)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    launch = subprocess.Popen([sys.executable, "-m", "aexp.cli", *SWEEP, f"hydra.sweep.dir={sweep}"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (sweep / "0" / "checkpoints" / "last.pt").is_file(), what="the first checkpoint")
        pids = job_processes(sweep)
        assert len(pids) == 1, pids
        os.kill(pids[0], signum)
        out, _ = launch.communicate(timeout=300)
    finally:
        if launch.poll() is None:
            launch.kill()
    return launch.returncode, out


def job_log(sweep: Path) -> tuple[Path, str]:
    (log_dir,) = [d for d in (sweep / ".submitit").iterdir() if (d / f"{d.name}_0_log.err").is_file()]
    return log_dir, (log_dir / f"{log_dir.name}_0_log.err").read_text()


def assert_resumed_where_it_stopped(err: str, job: Path, signame: str, tmp_path: Path) -> None:
    """The log shows the stop and the resume at the same step, each epoch trained once, and the
    finished run equals the same config left alone, in one process."""
    stop = re.search(rf"stopped by {signame} at epoch (\d+), step (\d+)", err)
    assert stop, err[-3000:]
    epoch, step = int(stop[1]), int(stop[2])
    assert 1 < epoch <= EPOCHS
    assert f"resuming from {job / 'checkpoints' / 'last.pt'} after epoch {epoch - 1}, step {step}" in err
    for e in range(1, EPOCHS + 1):
        assert len(re.findall(rf"epoch {e}/{EPOCHS}  train", err)) == 1, e
    assert (job / MARKER).is_file()
    assert torch.load(job / "checkpoints" / "last.pt", weights_only=True)["epoch"] == EPOCHS
    alone = tmp_path / "alone"
    aexp("train", *RUN, f"hydra.run.dir={alone}")
    assert len(losses(job)) == EPOCHS
    for got, want in zip(losses(job), losses(alone)):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the job process in /proc")
def test_submitit_local_job_stopped_and_requeued_resumes_from_its_checkpoint(tmp_path):
    # USR2, as SLURM sends before the time limit: submitit requeues the job by itself.
    sweep = tmp_path / "sweep"
    code, out = launch_and_signal(sweep, signal.SIGUSR2)
    assert code == 0, out[-3000:]
    log_dir, err = job_log(sweep)
    log = err + (log_dir / f"{log_dir.name}_0_log.out").read_text()
    assert "Requeued job" in log                      # submitit requeued it ...
    assert len(re.findall(r"Starting with JobEnvironment", log)) == 2   # ... and ran it again
    status, _ = pickle.loads((log_dir / f"{log_dir.name}_0_result.pkl").read_bytes())
    assert status == "success"
    assert_resumed_where_it_stopped(err, sweep / "0", "SIGUSR2", tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the job process in /proc")
def test_submitit_local_job_terminated_resumes_when_the_sweep_is_run_again(tmp_path):
    # SIGTERM, as `scancel` sends: the job saves and stops, is not requeued, and the sweep says so
    # in one line; the same command again resumes it.
    sweep = tmp_path / "sweep"
    code, out = launch_and_signal(sweep, signal.SIGTERM)
    assert code == 1
    assert "has not produced any output" in out and "Traceback" not in out, out[-3000:]
    assert not (sweep / "0" / MARKER).exists()
    aexp(*SWEEP, f"hydra.sweep.dir={sweep}")
    logs = "".join(f.read_text() for f in (sweep / ".submitit").glob("*/*_0_log.err"))
    assert "Requeued job" not in logs + "".join(f.read_text() for f in (sweep / ".submitit").glob("*/*_0_log.out"))
    assert_resumed_where_it_stopped(logs, sweep / "0", "SIGTERM", tmp_path)


def test_slurm_config_asks_for_the_requeue_signal_and_a_requeueable_job(monkeypatch):
    """The sbatch script submitit writes from hydra/launcher=slurm, with the parameters mapped as
    hydra-submitit-launcher maps them (no SLURM here: `srun` is only pretended to exist)."""
    import shutil

    import submitit
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from aexp.assemble import conf_dir
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm", "hydra.sweep.dir=/s"],
                      return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: "/usr/bin/srun" if name == "srun" else real_which(name, *a, **k))
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params.pop("_target_")
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("--signal=USR2@120", "--requeue", "--time=240", "--gpus-per-node=1", "--cpus-per-task=8"):
        assert f"#SBATCH {line}\n" in script, script
    assert executor._executor.max_num_timeout == 10
