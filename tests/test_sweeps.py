"""Sweeps beyond one process: Hydra's joblib and submitit launchers, the Optuna sweeper, skipping
finished jobs on a re-run, and DDP under torchrun. Every run is tiny (colours, 1-2 epochs)."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from aexp.errors import ConfigError
from aexp.jobs import MARKER, finished, objective
from aexp.report.summary import best_trial, describe_best
from conftest import ROOT, aexp

TINY = ["train.epochs=1", "dataset.n_train=200", "dataset.n_val=50", "frames.probe_size=50"]
GRID = ["optimizer.lr=1e-3,3e-3", "train.batch_size=32,64"]


def job_dirs(sweep):
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def assert_complete_grid(sweep, epochs=1):
    """Four job folders, each a whole run, together covering the 2x2 grid."""
    jobs = job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    combos = set()
    for job in jobs:
        assert (job / MARKER).is_file() and not (job / "FAILED").exists()
        assert torch.load(job / "checkpoints" / "last.pt", weights_only=True)["epoch"] == epochs
        rows = list(csv.DictReader(open(job / "metrics.csv")))
        assert len(rows) == epochs
        overrides = yaml.safe_load(open(job / ".hydra" / "overrides.yaml"))
        combos.add(tuple(sorted(o for o in overrides if o.split("=")[0] in ("optimizer.lr", "train.batch_size"))))
    assert len(combos) == 4


@pytest.mark.slow
def test_joblib_runs_two_jobs_at_once(tmp_path):
    sweep = tmp_path / "sweep"
    aexp("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *GRID, *TINY,
         f"hydra.sweep.dir={sweep}")
    assert_complete_grid(sweep)
    multirun = yaml.safe_load(open(sweep / "multirun.yaml"))
    assert multirun["hydra"]["launcher"]["n_jobs"] == 2


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    aexp("train", "-m", "hydra/launcher=submitit_local", *GRID, *TINY, f"hydra.sweep.dir={sweep}")
    assert_complete_grid(sweep)
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 4


def snapshot(jobs):
    return {j: ((j / "checkpoints" / "last.pt").stat().st_mtime_ns, (j / "metrics.csv").read_text())
            for j in jobs}


def test_rerun_of_finished_multirun_does_no_training(tmp_path):
    sweep = tmp_path / "sweep"
    args = ("train", "-m", "optimizer.lr=1e-3,3e-3", *TINY, f"hydra.sweep.dir={sweep}")
    aexp(*args)
    jobs = job_dirs(sweep)
    before = snapshot(jobs)
    out = aexp(*args)
    assert out.stderr.count("already holds this finished run: skipped") == 2
    assert "epoch 1/1" not in out.stderr
    assert snapshot(jobs) == before


@pytest.mark.slow
def test_rerun_runs_only_unfinished_jobs_and_refuses_other_configs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ("train", "-m", "optimizer.lr=1e-3,3e-3", *TINY, f"hydra.sweep.dir={sweep}")
    aexp(*args)
    jobs = job_dirs(sweep)
    before = snapshot(jobs)
    # One job loses its completion marker (as if killed before the end): only it runs again,
    # continuing from its last checkpoint.
    (jobs[1] / MARKER).unlink()
    out = aexp(*args)
    assert out.stderr.count("already holds this finished run: skipped") == 1
    assert out.stderr.count("resuming from") == 1
    after = snapshot(jobs)
    assert after[jobs[0]] == before[jobs[0]]
    assert (jobs[1] / MARKER).is_file()
    # A different config in the same folders is refused rather than written over.
    clash = aexp("train", "-m", "optimizer.lr=1e-3,3e-3", *TINY, "seed=1", f"hydra.sweep.dir={sweep}",
                 check=False)
    assert "already holds a finished run of a different config" in clash.stderr
    assert snapshot(jobs) == after
    assert not any((job / "FAILED").exists() for job in jobs)   # the finished runs are not marked failed


def search(tmp_path, n_trials, folder):
    """An Optuna search over the learning rate, stored in tmp_path/optuna.db."""
    aexp("train", "-m", "hydra/sweeper=optuna_sqlite", f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",
         "hydra.sweeper.study_name=lr", "hydra.sweeper.sampler.seed=0", "optimizer.lr=interval(1e-3,1e-1)",
         *TINY, f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweep.dir={tmp_path / folder}")
    return tmp_path / folder


def test_optuna_search_records_objective_and_best_trial(tmp_path):
    sweep = search(tmp_path, 4, "search")
    jobs = job_dirs(sweep)
    assert len(jobs) == 4
    values = {}
    for job in jobs:
        rows = list(csv.DictReader(open(job / "metrics.csv")))
        assert objective_of(job) == pytest.approx(float(rows[-1]["val_loss"]))
        lr = next(o for o in yaml.safe_load(open(job / ".hydra" / "overrides.yaml")) if o.startswith("optimizer.lr="))
        values[float(lr.split("=")[1])] = float(rows[-1]["val_loss"])
    result = yaml.safe_load(open(sweep / "optimization_results.yaml"))
    best_lr = min(values, key=values.get)
    assert result["best_value"] == pytest.approx(values[best_lr])
    assert result["best_params"]["optimizer.lr"] == pytest.approx(best_lr)
    folder, recorded = best_trial(sweep)
    assert recorded == result and objective_of(folder) == pytest.approx(values[best_lr])
    assert best_trial(tmp_path) is None   # not an Optuna sweep
    # `aexp summary` names the best trial and marks its row.
    line = (f"Optuna best trial of study lr: job {folder.name} · optimizer.lr={best_lr:.5g} · "
            f"val_loss = {values[best_lr]:.5g}, minimized")
    out = aexp("summary", sweep)
    assert line in out.stdout
    assert line in (sweep / "summary.md").read_text()
    notes = {r["job"]: r["note"] for r in csv.DictReader(open(sweep / "summary.csv"))}
    assert notes == {j.name: "Optuna best trial" if j == folder else "" for j in jobs}


@pytest.mark.slow
def test_optuna_search_continues_from_its_sqlite_storage(tmp_path):
    first = yaml.safe_load(open(search(tmp_path, 2, "first") / "optimization_results.yaml"))
    second = yaml.safe_load(open(search(tmp_path, 2, "second") / "optimization_results.yaml"))
    import optuna
    study = optuna.load_study(study_name="lr", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 4
    assert second["best_value"] <= first["best_value"]   # the best over both invocations
    # The best trial may have run in the first invocation: the second folder's summary says so.
    folder, line = describe_best(tmp_path / "second")
    here = {j: objective_of(j) for j in job_dirs(tmp_path / "second")}
    if second["best_value"] in here.values():
        assert here[folder] == second["best_value"]
    else:
        assert folder is None and "a trial run in an earlier invocation" in line


def objective_of(job):
    return json.loads((job / MARKER).read_text())["final"]["val_loss"]


def test_objective_reads_metrics_then_eval_json(tmp_path, compose_cfg):
    (tmp_path / "metrics.csv").write_text("epoch,val_loss,val_psnr\n1,0.5,10\n2,0.3,12\n3,0.4,11\n")
    (tmp_path / "eval.json").write_text(json.dumps({"test_ssim": 0.9}))
    pick = lambda *o: objective(compose_cfg(list(o)), tmp_path)
    assert pick() == 0.4
    assert pick("objective.reduce=min") == 0.3
    assert pick("objective.metric=val_psnr", "objective.reduce=max") == 12
    assert pick("objective.metric=test_ssim") == 0.9
    with pytest.raises(ConfigError, match="neither a metrics.csv column nor an eval.json key"):
        pick("objective.metric=accuracy")
    from aexp.assemble import check_config
    with pytest.raises(ConfigError, match="objective.reduce must be one of last, min, max"):
        check_config(compose_cfg(["objective.reduce=median"]))   # refused before any job runs


def test_finished_marker_matches_the_config(tmp_path, compose_cfg):
    from aexp.jobs import mark_finished
    cfg = compose_cfg(["train.epochs=2"])
    assert finished(cfg, tmp_path) is None
    mark_finished(cfg, tmp_path, {"epoch": 2, "val_loss": 0.1})
    assert finished(cfg, tmp_path)["final"]["val_loss"] == 0.1
    assert finished(compose_cfg(["train.epochs=2", "device=cpu"]), tmp_path)   # how, not what
    with pytest.raises(ConfigError, match="different config"):
        finished(compose_cfg(["train.epochs=2", "optimizer.lr=0.5"]), tmp_path)
    # More epochs of the same run: no longer finished (training goes on in the folder).
    assert finished(compose_cfg(["train.epochs=3"]), tmp_path) is None
    assert not (tmp_path / MARKER).exists()


def test_ddp_two_cpu_processes_match_one(tmp_path):
    # 275 samples in batches of 50: the last batch (25) splits unevenly over the two processes.
    cfg = ["model=mlp", "model.hidden=[16]", "train.epochs=2", "train.batch_size=50",
           "dataset.n_train=275", "dataset.n_val=60", "frames.probe_size=50", "device=cpu"]
    single = tmp_path / "single"
    aexp("train", *cfg, f"hydra.run.dir={single}")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "aexp.cli", "train", *cfg],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p for p in (work / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs          # both ranks used rank 0's folder
    ddp = runs[0]
    assert (ddp / MARKER).is_file() and (ddp / ".hydra" / "config.yaml").is_file()
    assert len(list((ddp / "frames").glob("epoch_*.png"))) == 3
    a, b = (list(csv.DictReader(open(r / "metrics.csv"))) for r in (single, ddp))
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        for col in ("train_loss", "val_loss"):
            assert float(rb[col]) == pytest.approx(float(ra[col]), rel=1e-5, abs=1e-7)
    wa, wb = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["model"] for r in (single, ddp))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("override, key, expected", [
    ("hydra/launcher=slurm", "max_num_timeout", 10),
    ("hydra/launcher=slurm", "_target_", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("hydra/sweeper=optuna_sqlite", "storage", "sqlite:///optuna.db"),
    ("hydra/sweeper=optuna_sqlite", "_target_", "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"),
])
def test_cluster_configs_compose_onto_the_plugins(override, key, expected):
    from hydra import compose, initialize_config_dir
    from aexp.assemble import conf_dir
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[override], return_hydra_config=True)
    node = cfg.hydra.launcher if "launcher" in override else cfg.hydra.sweeper
    assert node[key] == expected
