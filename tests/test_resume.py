"""Exact resume under faults, through the real entry point: a run killed (SIGKILL) at random
points and restarted each time, or stopped by SIGTERM and resumed with the command it prints,
ends with exactly the weights, metrics and frames of the same run left alone; and no checkpoint
or metrics file is ever unreadable along the way."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from aexp import checkpoint
from aexp.io import read_csv
from conftest import ROOT, aexp

# A VAE (draws noise: the torch RNG must be restored) with a 3-d latent (frames use a PCA basis
# and growing axes: the frame writer's state must be restored) on colours drawn afresh every
# epoch (the epoch's samples must be redrawn alike), 60 steps per epoch.
TINY = ["model=vae", "model.hidden=[16]", "model.latent_dim=3", "dataset.fresh=true", "dataset.n_train=600",
        "dataset.n_val=100", "dataset.n_test=10", "train.batch_size=10", "train.epochs=5",
        "frames.probe_size=50", "frames.size=48"]


def start(run_dir, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    return subprocess.Popen([sys.executable, "-m", "aexp.cli", "train", *TINY, *extra,
                             f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_readable(run_dir) -> int:
    """Assert the run folder's checkpoint and metrics load (whole rows only); return the
    checkpoint's epoch (-1 when there is none yet)."""
    epoch = -1
    if (run_dir / "checkpoints" / "last.pt").exists():
        epoch = checkpoint.load(run_dir / "checkpoints" / "last.pt")["epoch"]
    if (run_dir / "metrics.csv").exists():
        rows = read_csv(run_dir / "metrics.csv")
        assert all(None not in r.values() and len(r) == len(rows[0]) for r in rows)
        assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    return epoch


def wait_for_epoch(proc, run_dir, epoch: int, timeout: float = 240) -> None:
    """Poll (checking every file as it goes) until the checkpoint reaches `epoch` or the process
    ends."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and check_readable(run_dir) < epoch:
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.02)


def assert_same_run(got, ref) -> None:
    a = checkpoint.load(got / "checkpoints" / "last.pt")
    b = checkpoint.load(ref / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 5 and a["partial"] is None
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    best_a = checkpoint.load(got / "checkpoints" / "best.pt")["model"]
    best_b = checkpoint.load(ref / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_b)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]
    assert strip(read_csv(got / "metrics.csv")) == strip(read_csv(ref / "metrics.csv"))
    frames = sorted(p.name for p in (ref / "frames").glob("*.png"))
    assert sorted(p.name for p in (got / "frames").glob("*.png")) == frames
    for name in frames:
        assert np.array_equal(np.asarray(Image.open(got / "frames" / name)),
                              np.asarray(Image.open(ref / "frames" / name))), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run, left alone."""
    run = tmp_path_factory.mktemp("reference") / "run"
    proc = start(run)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return run


def kill_and_restart(run, kills: list[tuple[int, float]]) -> None:
    """For each (epoch, delay): start (or restart: the folder holds last.pt, so the run
    continues), wait until `epoch` epochs are saved plus `delay` seconds, SIGKILL. Then let the
    last restart finish."""
    for epoch, delay in kills:
        proc = start(run)
        wait_for_epoch(proc, run, epoch)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        check_readable(run)
    proc = start(run)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "resuming from" in err


def test_sigkill_at_random_points_then_resume_is_exact(tmp_path, reference):
    rng = random.Random(int(os.environ.get("AEXP_FAULT_SEED", time.time_ns())))
    kills = sorted((rng.randint(0, 3), rng.uniform(0.0, 0.3)) for _ in range(3))
    kill_and_restart(tmp_path / "run", kills)
    assert_same_run(tmp_path / "run", reference)


@pytest.mark.slow
def test_many_sigkills_then_resume_is_exact(tmp_path, reference):
    rng = random.Random(int(os.environ.get("AEXP_FAULT_SEED", time.time_ns())))
    kills = sorted((rng.randint(0, 4), rng.uniform(0.0, 0.5)) for _ in range(8))
    kill_and_restart(tmp_path / "run", kills)
    assert_same_run(tmp_path / "run", reference)


def test_sigterm_saves_mid_epoch_and_the_printed_command_resumes_exactly(tmp_path, reference):
    run = tmp_path / "run"
    proc = start(run)
    wait_for_epoch(proc, run, 1)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    line = next(ln for ln in err.splitlines() if "stopped by SIGTERM" in ln)
    assert f"checkpoint saved to {run / 'checkpoints' / 'last.pt'}" in line
    saved = checkpoint.load(run / "checkpoints" / "last.pt")
    assert saved["partial"] is not None and saved["epoch"] >= 1     # stopped mid-epoch
    command = re.search(r"resume with: (aexp train .*)$", line).group(1).split()
    assert command == ["aexp", "train", f"resume={run}"]
    done = aexp(*command[1:])            # the run's own options come back from its folder
    assert "resuming from" in done.stderr
    assert_same_run(run, reference)


def test_a_run_made_before_an_option_existed_resumes_when_the_option_reproduces_it():
    from aexp.errors import ConfigError
    from aexp.run.resume import check_same_config
    old = {"model": {"_target_": "aexp.models.pooling.Baseline32", "activation": "relu"},
           "train": {"epochs": 3}}
    now = {"model": {**old["model"], "code_activation": None}, "train": {"epochs": 3, "channels_last": True}}
    check_same_config(old, now, "old")                        # layout key + code = the stages' relu
    check_same_config(old, {**now, "model": {**old["model"], "code_activation": "relu"}}, "old")
    with pytest.raises(ConfigError, match=r"differs at model.code_activation \(checkpoint '<absent>', "
                                          r"now 'none'\); the run predates model.code_activation: "
                                          r"add model.code_activation=null"):
        check_same_config(old, {**now, "model": {**old["model"], "code_activation": "none"}}, "old")
    with pytest.raises(ConfigError, match="differs at train.new_knob .*give the run's own options"):
        check_same_config(old, {**now, "train": {**now["train"], "new_knob": 1}}, "old")


@pytest.mark.parametrize("saved", [{"threads": None, "channels_last": True}, {"threads": 2, "channels_last": False},
                                   {}])
def test_a_run_saved_under_other_speed_settings_resumes_and_stays_finished(saved):
    """Thread count and memory layout say how fast, not what: a run saved under `threads: null`
    or a number, `channels_last: true` or false, or before either existed, resumes under today's
    `auto` defaults, and a finished one stays finished."""
    from aexp.errors import ConfigError
    from aexp.run.resume import check_same_config, differences
    old = {"model": {"_target_": "aexp.models.dense.MLP"}, "train": {"epochs": 3, **saved}}
    now = {"model": old["model"], "train": {"epochs": 3, "threads": "auto", "channels_last": "auto"}}
    check_same_config(old, now, "old")
    assert differences(old, now) == []
    with pytest.raises(ConfigError, match="differs at train.epochz"):   # anything else still counts
        check_same_config(old, {**now, "train": {**now["train"], "epochz": 1}}, "old")


def test_evaluation_settings_never_make_a_run_another_config():
    """A changed evaluation default (eval.nll_samples 1000 -> 100) or objective must not turn
    every earlier run into "a different config": the training is the same."""
    from aexp.errors import ConfigError
    from aexp.run.resume import check_same_config, differences
    old = {"model": {"_target_": "aexp.models.dense.MLP"}, "train": {"epochs": 3},
           "eval": {"nll_samples": 1000}, "objective": {"metric": "val_loss"}}
    now = {**old, "eval": {"nll_samples": 100, "fitted_samples": False}, "objective": {"metric": "eval.vae.nll"}}
    assert differences(old, now) == []
    check_same_config(old, now, "old")
    with pytest.raises(ConfigError, match="differs at train.batch_size"):   # training still counts
        check_same_config(old, {**now, "train": {"epochs": 3, "batch_size": 8}}, "old")
