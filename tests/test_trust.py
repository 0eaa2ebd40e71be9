"""Run folders from anyone: a stored config, stored overrides or a `.hydra/` file naming code to
run is refused by eval, explore, resume and summary before anything is imported, and the file
its payload would write never appears; `--trust` opens a run whose model is the user's own class.
And one run per folder at a time: a second run into a busy folder is refused, naming the holder."""
import contextlib
import io
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from torch import nn

from aexp import checkpoint
from aexp.models import Autoencoder
from conftest import ROOT, run_cli

SMALL = ["dataset.n_train=64", "dataset.n_val=16", "dataset.n_test=16", "train.epochs=1",
         "frames.probe_size=16", "eval.enabled=false"]


def payloads(marker):
    """Stored-config entries that would each write `marker` (or run code) if instantiated."""
    pickled = marker.parent / "evil.pkl"
    return {
        "torch.load": {"_target_": "torch.load", "f": str(pickled), "weights_only": False},
        "numpy.savetxt": {"_target_": "numpy.savetxt", "fname": str(marker), "X": [1.0]},
        "builtins.exec": {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w')"]},
        "os.system": {"_target_": "os.system", "_args_": [f"touch {marker}"]},
        "subprocess.Popen": {"_target_": "subprocess.Popen", "_args_": [["touch", str(marker)]]},
        "oc.decode": f"${{oc.decode:'{{_target_: os.system, _args_: [touch {marker}]}}'}}",
    }


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    from aexp.cli import main
    run = tmp_path_factory.mktemp("trust") / "run"
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", *SMALL, f"hydra.run.dir={run}"]) == 0
    return run


def crafted(good_run, tmp_path, name):
    """A copy of a good run whose stored config's dataset carries the payload `name`."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    marker = tmp_path / "PWNED"
    evil = _Evil()
    evil.marker = marker
    (tmp_path / "evil.pkl").write_bytes(__import__("pickle").dumps(evil))
    payload = payloads(marker)[name]
    for ckpt in ("best.pt", "last.pt"):
        state = torch.load(run / "checkpoints" / ckpt, weights_only=True)
        state.pop("format")
        state["config"]["dataset"] = payload if isinstance(payload, dict) else {
            "_target_": "aexp.data.colors", "n_train": payload}
        checkpoint.save(run / "checkpoints" / ckpt, state)
    return run, marker


@pytest.mark.parametrize("name", ["torch.load", "numpy.savetxt", "builtins.exec", "os.system",
                                  "subprocess.Popen", "oc.decode"])
@pytest.mark.parametrize("command", ["eval", "explore", "resume"])
def test_crafted_stored_config_is_refused(good_run, tmp_path, capsys, name, command):
    run, marker = crafted(good_run, tmp_path, name)
    args = {"eval": ["eval", run, "--no-pictures"], "explore": ["explore", run],
            "resume": ["train", f"resume={run}", "train.epochs=2"]}[command]
    code, err = run_cli(args, capsys)
    assert code == 2, err[-800:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("aexp: error: ") and "Traceback" not in err
    if command != "resume":   # resume composes the config anew and refuses the stored one as different
        assert "--trust" in last and "AEXP_TRUST=1" in last and "dataset" in last
    assert not marker.exists()


@pytest.mark.parametrize("override", [
    "+hydra.callbacks.x._target_=os.system",
    "hydra.job.env_set.X=1",
    "hydra/launcher=joblib",
    "+model._target_=os.system",
    "+dataset.n_train=${oc.decode:'{_target_: os.system}'}",
])
@pytest.mark.parametrize("stored_in", ["checkpoint", ".hydra"])
def test_crafted_stored_overrides_are_refused_on_resume(good_run, tmp_path, capsys, override, stored_in):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    if stored_in == "checkpoint":
        state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        state.pop("format")
        state["overrides"] = [*state["overrides"], override]
        checkpoint.save(run / "checkpoints" / "last.pt", state)
    else:
        (run / "checkpoints" / "last.pt").unlink()
        (run / "checkpoints" / "best.pt").rename(run / "checkpoints" / "last.pt")
        state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        state.pop("format")
        state.pop("overrides")                 # an older checkpoint: the .hydra file is read
        checkpoint.save(run / "checkpoints" / "last.pt", state)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*SMALL, override]))
    code, err = run_cli(["train", f"resume={run}", "train.epochs=2"], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("aexp: error: ") and "--trust" in last, err[-800:]


def test_crafted_hydra_config_is_harmless_to_summary(good_run, tmp_path, capsys):
    """summary reads .hydra/ files as data and instantiates nothing."""
    import shutil
    sweep = tmp_path / "sweep"
    shutil.copytree(good_run, sweep / "0")
    marker = tmp_path / "PWNED"
    cfg = yaml.safe_load((sweep / "0" / ".hydra" / "config.yaml").read_text())
    cfg["dataset"] = payloads(marker)["os.system"]
    cfg["train"]["epochs"] = payloads(marker)["oc.decode"]
    (sweep / "0" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, err = run_cli(["summary", sweep], capsys)
    assert code in (0, 2) and "Traceback" not in err
    assert not marker.exists()


class OwnModel(Autoencoder):
    """A user's own model class, defined outside aexp."""

    def __init__(self, in_shape, out_shape):
        super().__init__()
        self.enc, self.dec = nn.Linear(3, 2), nn.Linear(2, 3)

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return torch.sigmoid(self.dec(z))


def test_trust_opens_a_run_of_the_users_own_model(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    run = tmp_path / "run"
    code, err = run_cli(["train", "model=linear", "~model", "+model._target_=test_trust.OwnModel", *SMALL,
                         f"hydra.run.dir={run}"], capsys)
    assert code == 0, err[-1500:]                     # the command line is the user's own
    code, err = run_cli(["eval", run, "--no-pictures"], capsys)
    assert code == 2 and "test_trust.OwnModel" in err and "--trust" in err
    code, err = run_cli(["eval", run, "--no-pictures", "--trust"], capsys)
    assert code == 0, err[-1500:]
    assert "AEXP_TRUST" not in os.environ              # --trust held for that call only
    monkeypatch.setenv("AEXP_TRUST", "1")
    assert run_cli(["explore", run, "--points", "10"], capsys)[0] == 0


def test_a_second_run_into_a_busy_folder_is_refused_and_a_killed_holder_frees_it(tmp_path, capsys):
    """The holder is another process; the second and third runs are this one (in-process)."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    holder = subprocess.Popen([sys.executable, "-m", "aexp.cli", "train", "train.epochs=400",
                               "frames.enabled=false", "eval.enabled=false", f"hydra.run.dir={run}"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):                     # until it trains (its lock is taken before)
            if (run / "metrics.csv").is_file():
                break
            time.sleep(0.05)
        assert (run / "metrics.csv").is_file()
        before = (run / ".hydra" / "config.yaml").read_text()
        code, err = run_cli(["train", "seed=1", "train.epochs=1", f"hydra.run.dir={run}"], capsys)
        line = err.strip().splitlines()[-1]
        assert code == 2 and line.startswith("aexp: error: ") and f"pid {holder.pid}" in line, err
        assert (run / ".hydra" / "config.yaml").read_text() == before   # nothing of it touched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    code, err = run_cli(["train", "train.epochs=1", "resume=false", "frames.enabled=false",
                         "eval.enabled=false", f"hydra.run.dir={run}"], capsys)
    assert code == 0, err[-800:]
