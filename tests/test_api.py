"""The Python API (`aexp.compose`, `train`, `load_run`, `evaluate`): the docs' notebook session
(docs/howto/notebook.md) runs as written; `import aexp` stays cheap; a composed config is the CLI's and leaves Hydra as it
found it; training goes through the job (finished runs skipped, other configs refused) and keeps
what `aexp train resume=` needs; runs load with their metrics and evaluate with settings."""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import aexp
from aexp import checkpoint
from aexp.assemble import conf_dir
from aexp.errors import ConfigError
from conftest import ROOT, run_cli

TINY = ["dataset.n_train=64", "dataset.n_val=16", "dataset.n_test=16", "train.epochs=1",
        "train.threads=1", "frames.enabled=false", "eval.enabled=false"]


def rows(metrics) -> list[dict]:
    """`Run.metrics` as row dicts: it is a DataFrame where pandas is installed."""
    return metrics.to_dict("records") if hasattr(metrics, "to_dict") else metrics


NOTEBOOK = ROOT / "docs" / "howto" / "notebook.md"


def notebook_session() -> str:
    """The first code block of the docs' notebook page."""
    return re.search(r"```python\n(.*?)```", NOTEBOOK.read_text(), re.S).group(1)


def test_the_docs_notebook_session_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # its run folder is relative: outputs/...
    code = notebook_session()
    assert len(code.strip().splitlines()) <= 12
    scope = {}
    exec(compile(code, str(NOTEBOOK), "exec"), scope)
    assert scope["z"].shape == (360, 2)                        # the digits' test split, 2-D codes
    assert scope["picture"].shape == (64, 64)                  # an 8 x 8 grid of 8 x 8 digits
    assert 0 <= float(scope["picture"].min()) and float(scope["picture"].max()) <= 1
    assert scope["row"]["epoch"] == 20 and "psnr" in scope["report"]["reconstruction"]
    run_dir = tmp_path / "outputs" / "notebook_vae"
    assert (run_dir / "COMPLETED.json").is_file() and (run_dir / "eval.json").is_file()


def test_import_aexp_brings_neither_torch_nor_hydra():
    probe = ("import sys, aexp; heavy = {'torch', 'hydra', 'aexp.api'} & set(sys.modules); "
             "assert not heavy, heavy; aexp.compose; assert 'aexp.api' in sys.modules; "
             "assert set(aexp.API) <= set(dir(aexp))")
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=ROOT, timeout=120)
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        aexp.nosuch


def test_compose_is_the_cli_config_and_leaves_hydra_as_found(compose_cfg, tmp_path, capsys):
    overrides = ["model=vae", "dataset=digits", "model.hidden=[32]"]
    assert aexp.compose(overrides) == compose_cfg(overrides)
    assert not GlobalHydra.instance().is_initialized()
    with pytest.raises(ConfigError, match="Could not find 'model/nosuch'") as bad:
        aexp.compose(["model=nosuch"])
    assert "\n" not in str(bad.value) and not GlobalHydra.instance().is_initialized()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):   # a notebook's own
        assert aexp.compose(["seed=3"]).seed == 3
        assert GlobalHydra.instance().is_initialized()
    assert not GlobalHydra.instance().is_initialized()
    # and the CLI still works in the same process
    code, err = run_cli(["train", *TINY, f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 0, err
    assert aexp.compose().model._target_ == "aexp.models.dense.MLP"


def test_train_is_the_job_and_resumes_from_the_cli(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = aexp.compose(TINY)
    cfg.train.epochs = 2   # edited in place, as notebooks do
    row = aexp.train(cfg, run_dir)
    assert row["epoch"] == 2 and (run_dir / "COMPLETED.json").is_file()
    assert not (run_dir / "eval.json").exists()   # eval.enabled=false, as the job reads it
    capsys.readouterr()
    assert aexp.train(cfg, str(run_dir)) == row   # finished: not trained again
    assert "already holds this finished run: skipped" in " ".join(capsys.readouterr().err.split())
    other = aexp.compose([*TINY, "model.latent_dim=3"])
    with pytest.raises(ConfigError, match="already holds a finished run of a different config"):
        aexp.train(other, run_dir)
    with pytest.raises(ConfigError, match="unknown config key train.epochz"):
        aexp.train(aexp.compose([*TINY, "+train.epochz=1"]), tmp_path / "bad")
    with pytest.raises(ConfigError, match="needs a config from aexp.compose"):
        aexp.train({"seed": 0}, tmp_path / "bad")
    # the checkpoint keeps the overrides and the in-place edit: the CLI recomposes this config
    saved = checkpoint.load(run_dir / "checkpoints" / "last.pt")["overrides"]
    assert saved == [*TINY, "++train.epochs=2"]
    code, err = run_cli(["train", f"resume={run_dir}", "train.epochs=3"], capsys)
    assert code == 0, err
    assert [r["epoch"] for r in rows(aexp.load_run(run_dir, "last").metrics)] == [1, 2, 3]


def test_load_run_and_evaluate(tmp_path, capsys):
    run_dir = tmp_path / "run"
    aexp.train(aexp.compose([*TINY, "train.epochs=2"]), run_dir)
    run = aexp.load_run(run_dir, checkpoint="last")
    assert run.checkpoint == "last" and run.state["epoch"] == 2 and not run.model.training
    assert str(run.device) == "cpu" and run.cfg.train.epochs == 2
    assert [r["epoch"] for r in rows(run.metrics)] == [1, 2] and "val_loss" in rows(run.metrics)[0]

    report = aexp.evaluate(run, pictures=False)
    assert report["checkpoint"] == "last" and report["n_test"] == 16 and "pictures" not in report
    assert (run_dir / "eval.json").is_file()
    with pytest.raises(ConfigError, match="unknown eval setting bogus"):
        aexp.evaluate(run, bogus=1)
    with pytest.raises(ConfigError, match="the checkpoint is chosen by aexp.load_run"):
        aexp.evaluate(run, checkpoint="best")
    with pytest.raises(ConfigError, match="eval.nll_samples must be at least 0, got -1"):
        aexp.evaluate(run, nll_samples=-1)
    with pytest.raises(ConfigError, match="checkpoint must be best or last"):
        aexp.load_run(run_dir, checkpoint="newest")


def test_load_run_keeps_the_trust_check(tmp_path):
    run_dir = tmp_path / "run"
    aexp.train(aexp.compose(TINY), run_dir)
    crafted = tmp_path / "crafted"
    shutil.copytree(run_dir, crafted)
    marker = tmp_path / "PWNED"
    path = crafted / "checkpoints" / "best.pt"
    state = checkpoint.load(path)
    state["config"]["dataset"] = {"_target_": "os.system", "_args_": [f"touch {marker}"]}
    checkpoint.save(path, state)
    with pytest.raises(ConfigError, match="names 'os.system'.*--trust"):
        aexp.load_run(crafted)
    assert not marker.exists()
    assert isinstance(aexp.load_run(run_dir, trust=True).model, torch.nn.Module)
    assert "AEXP_TRUST" not in os.environ   # trust=True holds for that call only
