"""The PixelCNN prior over VQ-VAE code maps (models/pixelcnn.py, `aexp prior`, run/prior.py): its
masks are causal, it beats a uniform prior and the codes' own unigram frequencies on a tiny VQ
run, it continues exactly after a SIGKILL, and `aexp sample --sampler prior` draws from it."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from aexp import checkpoint
from aexp.io import read_csv
from aexp.models.pixelcnn import PixelCNN
from conftest import ROOT, run_cli

VQ = ["model=vqvae", "dataset=digits", "model.channels=[8]", "model.codebook.size=16",
      "model.codebook.dim=4", "train.epochs=3", "train.threads=1", "frames.enabled=false",
      "eval.enabled=false"]
PRIOR = ["epochs=4", "model.channels=16", "model.layers=2", "batch_size=32"]


def test_each_position_sees_only_the_positions_before_it():
    torch.manual_seed(0)
    net = PixelCNN(8, channels=8, layers=3, kernel=5)
    codes = torch.randint(0, 8, (1, 5, 5))
    emb = net.embed(codes).permute(0, 3, 1, 2).detach().requires_grad_(True)
    h = net.first(emb)
    for block in net.blocks:
        h = h + block(torch.relu(h))
    logits = net.head(h)
    for i, j in [(0, 0), (2, 3), (4, 4)]:
        (grad,) = torch.autograd.grad(logits[0, :, i, j].sum(), emb, retain_graph=True)
        seen = grad[0].abs().sum(0) > 0
        order = torch.arange(25).view(5, 5)
        assert not seen[order >= i * 5 + j].any(), (i, j)     # itself and later: never


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("prior") / "vq"
    from aexp.cli import main
    assert main(["train", *VQ, f"hydra.run.dir={run}"]) == 0
    return run


def test_prior_beats_a_uniform_prior_and_the_unigram_and_samples(vq_run, tmp_path, capsys):
    run = tmp_path / "vq"
    shutil.copytree(vq_run, run)
    code, err = run_cli(["prior", run, *PRIOR], capsys)
    assert code == 0, err
    nll = json.loads((run / "prior" / "nll.json").read_text())
    assert nll["code_shape"] == [4, 4] and nll["codebook_size"] == 16
    assert nll["uniform_nll"] == pytest.approx(16 * torch.log(torch.tensor(16.0)).item())
    assert nll["test_nll"] < nll["unigram_nll"] < nll["uniform_nll"]
    assert [r["epoch"] for r in read_csv(run / "prior" / "metrics.csv")] == [1, 2, 3, 4]
    code, err = run_cli(["sample", run, "--sampler", "prior", "-n", "40"], capsys)
    assert code == 0, err
    entry = json.loads((run / "eval.json").read_text())["samplers"]["prior"]
    assert entry["from"] == "the PixelCNN code prior" and entry["test_nll"] == nll["test_nll"]
    assert (run / "pictures" / "samples_prior.png").is_file()
    # the folder may come from anyone: a garbled nll.json costs its figures, not the samples
    (run / "prior" / "nll.json").write_text('["not", "an", "object"]')
    code, err = run_cli(["sample", run, "--sampler", "prior", "-n", "8"], capsys)
    assert code == 0, err
    entry = json.loads((run / "eval.json").read_text())["samplers"]["prior"]
    assert "test_nll" not in entry and "unreadable" in entry["note"]
    # other settings on a trained prior: refused, not mixed in
    code, err = run_cli(["prior", run, *PRIOR[:-1], "batch_size=8"], capsys)
    assert code == 2 and "settings differ at batch_size" in err
    code, err = run_cli(["prior", run, "nonsense=1"], capsys)
    assert code == 2 and "unknown setting 'nonsense=1'" in err
    # a prior trained on another checkpoint's codes (the VQ run trained on since) is not used
    best_pt = run / "prior" / "checkpoints" / "best.pt"
    checkpoint.save(best_pt, {**checkpoint.load(best_pt), "run_epoch": 99})
    code, err = run_cli(["sample", run, "--sampler", "prior", "-n", "8"], capsys)
    assert code == 2 and "trained on the codes of epoch 99" in err and "train a new prior" in err


def test_a_crafted_prior_checkpoint_is_refused_before_anything_is_built(vq_run, tmp_path, capsys):
    run = tmp_path / "vq"
    shutil.copytree(vq_run, run)
    code, err = run_cli(["sample", run, "--sampler", "prior"], capsys)
    assert code == 2 and "no code prior yet" in err and f"aexp prior {run}" in err
    checkpoint.save(run / "prior" / "checkpoints" / "best.pt",
                    {"model": {}, "config": {"model": {"_target_": "os.system", "command": "true"}}})
    code, err = run_cli(["sample", run, "--sampler", "prior"], capsys)
    assert code == 2 and "'os.system', which is not one of aexp's own targets" in err
    assert err.count("\n") == 1


def test_a_continuous_code_has_no_code_prior_to_train(tmp_path, capsys):
    run = tmp_path / "ae"
    code, err = run_cli(["train", "model=mlp", *VQ[1:2], *VQ[5:], f"hydra.run.dir={run}"], capsys)
    assert code == 0, err
    code, err = run_cli(["prior", run], capsys)
    assert code == 2 and "needs a VQ run" in err
    code, err = run_cli(["sample", tmp_path / "ae", "--sampler", "prior"], capsys)
    assert code == 2 and "no prior to sample" in err


def test_prior_continues_exactly_after_a_sigkill(vq_run, tmp_path, capsys):
    ref, got = tmp_path / "ref", tmp_path / "got"
    shutil.copytree(vq_run, ref)
    shutil.copytree(vq_run, got)
    code, err = run_cli(["prior", ref, *PRIOR], capsys)
    assert code == 0, err
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "aexp.cli", "prior", str(got), *PRIOR]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    last = got / "prior" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while proc.poll() is None and not last.is_file():
        assert time.monotonic() < deadline, "the prior made no progress"
        time.sleep(0.02)
    time.sleep(0.2)                        # into the next epoch
    proc.kill()
    proc.wait()
    killed_at = checkpoint.load(last)["epoch"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert killed_at < 4 and "resuming the prior" in done.stdout
    a, b = checkpoint.load(last), checkpoint.load(ref / "prior" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(read_csv(got / "prior" / "metrics.csv")) == strip(read_csv(ref / "prior" / "metrics.csv"))
    assert json.loads((got / "prior" / "nll.json").read_text()) == json.loads((ref / "prior" / "nll.json").read_text())
