"""CPU threads decided by the code: `train.threads` (auto, a number, null) from the step's counted
cost and the cores shared among the jobs running at once (joblib's n_jobs, torchrun's
LOCAL_WORLD_SIZE, AEXP_JOBS), the run banner saying so, a run trained under other threads going on
under auto, and the wait policy the CLI gives OpenMP. Tiny models; cores and jobs monkeypatched."""
import os

import pytest
import torch
from omegaconf import OmegaConf

from aexp import cli
from aexp.assemble import build_parts
from aexp.errors import ConfigError
from aexp.run import threads
from conftest import run_cli

CPU = torch.device("cpu")
SMALL = ["dataset.n_train=64", "dataset.n_val=16", "dataset.n_test=16", "train.epochs=1",
         "frames.enabled=false", "eval.enabled=false"]


@pytest.fixture(autouse=True)
def _keep_torch_threads(monkeypatch):
    """Each test sees 1 job and no torchrun unless it says otherwise, and leaves torch's thread
    count as it found it."""
    monkeypatch.delenv(threads.JOBS_ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cores(monkeypatch):
    """cores(n): this process may run on n cores (its affinity, as threads.cores, i.e. data.decode.usable_cores, reads it)."""
    def _set(n):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))
    return _set


def test_a_small_step_gets_one_thread_whatever_the_cores(cores):
    cores(16)
    assert threads.choose("auto", 5e6, CPU) == (1, "auto: small step, ~5 MFLOP per step")
    assert threads.choose("auto", 19.9e6, CPU)[0] == 1


def test_a_big_step_gets_the_cores_shared_among_the_jobs_at_once(cores, monkeypatch):
    cores(8)
    assert threads.choose("auto", 2e9, CPU) == (8, "auto: 8 cores / 1 job, ~2e+03 MFLOP per step")
    monkeypatch.setenv(threads.JOBS_ENV, "4")                  # a joblib sweep of n_jobs=4
    assert threads.choose("auto", 2e9, CPU) == (2, "auto: 8 cores / 4 jobs, ~2e+03 MFLOP per step")
    monkeypatch.delenv(threads.JOBS_ENV)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")                # torchrun --nproc_per_node 2
    assert threads.choose("auto", 2e9, CPU)[0] == 4
    monkeypatch.setenv(threads.JOBS_ENV, "3")                  # both: 6 processes on 8 cores
    assert threads.choose("auto", 2e9, CPU)[0] == 1
    monkeypatch.setenv(threads.JOBS_ENV, "16")                 # more jobs than cores: still 1
    assert threads.choose("auto", 2e9, CPU)[0] == 1


def test_a_middling_step_gets_a_thread_per_10_mflop(cores):
    cores(8)
    n, why = threads.choose("auto", 35e6, CPU)
    assert n == 3 and "a thread per 10 MFLOP" in why


def test_a_number_wins_null_is_torch_default_and_cuda_gets_the_share(cores, monkeypatch):
    cores(8)
    assert threads.choose(3, 1e3, CPU) == (3, "train.threads")
    assert threads.choose(None, 1e12, CPU) == (None, "torch's default")
    monkeypatch.setenv(threads.JOBS_ENV, "2")
    assert threads.choose("auto", None, torch.device("cuda")) == (4, "auto: 8 cores / 2 jobs")


@pytest.mark.parametrize("value", ["abc", "0", "-2", ""])
def test_a_bad_jobs_count_is_refused(monkeypatch, value):
    monkeypatch.setenv(threads.JOBS_ENV, value)
    with pytest.raises(ConfigError, match=f"AEXP_JOBS must be a positive integer, got '{value}'"):
        threads.choose("auto", 1e9, CPU)


def test_a_bad_jobs_count_is_one_line_from_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(threads.JOBS_ENV, "many")
    code, err = run_cli(["train", *SMALL, f"hydra.run.dir={tmp_path}"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and lines == ["aexp: error: AEXP_JOBS must be a positive integer, got 'many'"]


def test_apply_counts_the_real_step_of_a_tiny_and_a_big_model(compose_cfg, cores):
    cores(4)
    cfg = compose_cfg([])                                      # the default run: 3 -> 2 -> 3
    data, model, _ = build_parts(cfg, CPU)
    assert threads.apply("auto", model, data, 64, CPU).startswith("threads 1 (auto: small step, ~0.0")
    assert torch.get_num_threads() == 1
    cfg = compose_cfg(["model=conv", "dataset=digits"])       # ~208 MFLOP a step at batch 64
    data, model, _ = build_parts(cfg, CPU)
    text = threads.apply("auto", model, data, 64, CPU)
    assert text.startswith("threads 4 (auto: 4 cores / 1 job, ~2") and torch.get_num_threads() == 4
    assert threads.apply("auto", model, data, 2, CPU).startswith("threads 1 (auto: small step")
    assert threads.apply(2, model, data, 64, CPU) == f"threads 2 (train.threads{threads.waits()})"
    assert threads.waits() in ("; OpenMP waits sleep", "; OpenMP waits spin")


def test_null_puts_torch_default_back_after_another_run_changed_it(compose_cfg):
    data, model, _ = build_parts(compose_cfg([]), CPU)
    threads.apply("auto", model, data, 64, CPU)              # remembers torch's own count first
    torch.set_num_threads(1)
    assert threads.apply(None, model, data, 64, CPU) == f"threads {threads._torch_default} (torch's default{threads.waits()})"
    assert torch.get_num_threads() == threads._torch_default


def test_the_run_banner_and_log_say_how_many_threads_and_why(tmp_path, capsys):
    code, err = run_cli(["train", *SMALL, f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 0
    banner = next(line for line in (tmp_path / "train.log").read_text().splitlines() if "parameters)" in line)
    assert "· threads 1 (auto: small step, ~" in banner and "MFLOP per step) ·" in banner


def test_a_run_trained_with_threads_2_goes_on_under_auto_and_then_counts_as_finished(tmp_path, capsys):
    run = [*(a for a in SMALL if not a.startswith("train.epochs")), f"hydra.run.dir={tmp_path}"]
    assert run_cli(["train", *run, "train.epochs=1", "train.threads=2", "train.channels_last=true"],
                   capsys)[0] == 0
    code, err = run_cli(["train", *run, "train.epochs=2"], capsys)    # today's defaults: auto, auto
    assert code == 0 and "resuming from" in err, err
    code, err = run_cli(["train", *run, "train.epochs=2", "train.threads=1"], capsys)
    assert code == 0 and "already holds this finished run: skipped" in " ".join(err.split()), err


def test_joblib_jobs_at_once_from_the_launcher_config():
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert cli._joblib_jobs(OmegaConf.create({"_target_": joblib, "n_jobs": 4})) == 4
    assert cli._joblib_jobs(OmegaConf.create({"_target_": joblib, "n_jobs": None})) == 1
    import joblib as jl
    assert cli._joblib_jobs(OmegaConf.create({"_target_": joblib, "n_jobs": -1})) == jl.cpu_count()
    assert cli._joblib_jobs(OmegaConf.create({"_target_": "hydra._internal.core_plugins."
                                              "basic_launcher.BasicLauncher"})) is None


def test_an_in_process_joblib_job_sees_its_jobs_and_leaves_no_trace(tmp_path, capsys, monkeypatch):
    seen = []
    real = threads.jobs_at_once
    monkeypatch.setattr(threads, "jobs_at_once", lambda: seen.append(os.environ.get(threads.JOBS_ENV)) or real())
    code, _ = run_cli(["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=1", *SMALL,
                       f"hydra.sweep.dir={tmp_path}"], capsys)   # n_jobs=1: joblib runs it here
    assert code == 0 and seen == ["1"] and threads.JOBS_ENV not in os.environ


def test_the_cli_makes_openmp_threads_sleep_on_busy_cores_unless_told_otherwise(monkeypatch, capsys):
    calls = []
    for quiet, want in ((False, "PASSIVE"), (True, None)):
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        monkeypatch.setattr(cli, "cores_quiet", lambda window: calls.append(window) or quiet)
        with pytest.raises(SystemExit):       # the command's own --help: argparse exits
            cli.main(["summary", "--help"])
        assert os.environ.get("OMP_WAIT_POLICY") == want
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with pytest.raises(SystemExit):
        cli.main(["summary", "--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and len(calls) == 2   # the user's value: not asked


def test_cores_quiet_reads_the_machines_cpu_time(monkeypatch, tmp_path):
    """Busy when other processes used a quarter of the CPU time over the window; False where
    /proc/stat cannot be read or parsed (another OS: the sleeping waits, as before)."""
    import builtins
    samples = iter(["cpu 100 0 100 800 0 0 0 0 0 0\n", "cpu 150 0 150 900 0 0 0 0 0 0\n",   # 50 % busy
                    "cpu 100 0 0 900 0 0 0 0 0 0\n", "cpu 110 0 0 990 0 0 0 0 0 0\n"])      # 10 % busy
    real_open = builtins.open
    fake = lambda path, *a, **k: __import__("io").StringIO(next(samples)) if path == "/proc/stat" else real_open(path, *a, **k)
    monkeypatch.setattr(builtins, "open", fake)
    assert cli.cores_quiet(0) is False
    assert cli.cores_quiet(0) is True
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: (_ for _ in ()).throw(OSError("no /proc")))
    assert cli.cores_quiet(0) is False


@pytest.mark.slow
def test_a_joblib_sweep_shares_the_cores_among_its_jobs(tmp_path):
    from conftest import aexp
    aexp("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=mlp",
         "optimizer.lr=1e-3,2e-3", *SMALL, f"hydra.sweep.dir={tmp_path}")
    for job in ("0", "1"):
        log = (tmp_path / job / "train.log").read_text()
        assert " / 2 jobs, ~" in log, log
