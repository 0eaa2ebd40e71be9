"""The disentangling models beside β-VAE and β-TCVAE: FactorVAE (a discriminator with its own
optimiser, stepped by the same loop, saved and restored with the run), DIP-VAE I/II and the
annealed-capacity β-VAE. Each loss config trains through the real loop; the discriminator learns
(its accuracy leaves chance); a FactorVAE run stopped mid-epoch by SIGTERM, or killed outright,
continues to exactly the run left alone; DIP's penalty and the capacity schedule by hand."""
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from omegaconf import open_dict

from aexp import checkpoint
from aexp.assemble import build_loss
from aexp.errors import ConfigError, Interrupted
from aexp.io import read_csv
from aexp.losses import (DIP, CapacityKL, Critic, FactorTC, Loss, Term, dip_covariance, dip_penalty,
                         permute_dims)
from aexp.models import Output
from aexp.run.train import train
from conftest import ROOT, aexp, options, two_gloo_processes

# A small VAE on the bundled 8x8 digits: seconds per run on one thread.
TINY = ["dataset=digits", "model=vae", "model.hidden=[32]", "model.latent_dim=4",
        "train.batch_size=64", "train.threads=1", "frames.enabled=false", "eval.enabled=false",
        "device=cpu"]
NEW_LOSSES = {"factorvae": ["loss=factorvae"], "dipvae": ["loss=dipvae"],
              "dipvae-ii": ["loss=dipvae", "loss.terms.dip.type=ii"],
              "beta_vae_capacity": ["loss=beta_vae_capacity", "loss.terms.capacity.anneal_steps=10"]}
COLUMNS = {"factorvae": ["train_tc", "val_tc", "train_tc_disc_acc", "train_tc_disc_loss"],
           "dipvae": ["train_dip", "val_dip"], "dipvae-ii": ["train_dip", "val_dip"],
           "beta_vae_capacity": ["train_capacity_gap", "train_capacity_kl", "val_capacity_c"]}


def test_every_new_loss_option_is_covered():
    assert {"factorvae", "dipvae", "beta_vae_capacity"} <= set(options("loss"))
    assert {o[0].split("=")[1] for o in NEW_LOSSES.values()} == {"factorvae", "dipvae", "beta_vae_capacity"}


@pytest.mark.parametrize("name", NEW_LOSSES)
def test_each_new_loss_trains_through_the_loop(compose_cfg, tmp_path, name):
    cfg = compose_cfg([*TINY, *NEW_LOSSES[name], "train.max_steps=12"])
    row = train(cfg, tmp_path / "run")
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])
    for column in COLUMNS[name]:
        assert math.isfinite(float(row[column])), column
    if name == "beta_vae_capacity":     # 12 steps taken: C was raised to c_max after 10
        assert float(row["val_capacity_c"]) == 25.0


def correlated_codes(n=64):
    a, b = torch.randn(n, 1), torch.randn(n, 1)
    return torch.cat([a, a + 0.05 * torch.randn(n, 1), b], 1)    # z1 ~ z0: far from factorised


def test_the_discriminator_learns_to_tell_codes_from_permuted_codes():
    torch.manual_seed(0)
    term = FactorTC(code_size=3, hidden=[32, 32],
                    optimizer=lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.5, 0.9)))
    first = [term.update(Output(None, correlated_codes(), {}), None, None, None) for _ in range(5)]
    last = [term.update(Output(None, correlated_codes(), {}), None, None, None) for _ in range(300)][-20:]
    chance = sum(float(r["disc_acc"]) for r in first) / 5
    trained = sum(float(r["disc_acc"]) for r in last) / 20
    assert abs(chance - 0.5) < 0.2 and trained > 0.8, (chance, trained)
    # its logit, the TC estimate the model's loss sees, is now positive on such codes
    assert term(Output(None, correlated_codes(), {}), None, None, None, "sum").mean() > 0.5


def test_permuting_dims_keeps_each_marginal_and_breaks_the_joint():
    torch.manual_seed(0)
    z = correlated_codes(512)
    p = permute_dims(z)
    for j in range(3):
        assert torch.equal(p[:, j].sort().values, z[:, j].sort().values)
    assert torch.corrcoef(z.T)[0, 1] > 0.99 and abs(torch.corrcoef(p.T)[0, 1]) < 0.2


def test_factorvae_discriminator_accuracy_departs_from_chance_on_a_tiny_run(compose_cfg, tmp_path):
    """KL weight 0.1 and γ = 0 leave the code free to correlate: the discriminator finds it."""
    cfg = compose_cfg([*TINY, "model.hidden=[64]", "loss=factorvae", "loss.terms.tc.weight=0",
                       "loss.terms.kl.weight=0.1", "loss.terms.tc.optimizer.lr=1e-3", "train.epochs=10"])
    train(cfg, tmp_path / "run")
    acc = [float(r["train_tc_disc_acc"]) for r in read_csv(tmp_path / "run" / "metrics.csv")]
    assert abs(acc[0] - 0.5) < 0.05 and max(acc[-3:]) > 0.56, acc


def test_a_critic_needs_its_own_optimizer_and_a_code_size():
    with pytest.raises(ConfigError, match="needs its own optimizer"):
        FactorTC(code_size=3)
    with pytest.raises(ConfigError, match="needs the code size"):
        FactorTC(optimizer=torch.optim.Adam)


def test_the_optimizer_comes_from_config_and_the_code_size_from_the_model(compose_cfg):
    cfg = compose_cfg(["loss=factorvae", "loss.terms.tc.optimizer.lr=0.003", "loss.terms.tc.hidden=[8]"])
    tc = build_loss(cfg.loss, code_size=5).terms["tc"]
    assert isinstance(tc.optimizer, torch.optim.Adam)
    assert tc.optimizer.param_groups[0]["lr"] == 0.003 and tc.optimizer.param_groups[0]["betas"] == (0.5, 0.9)
    assert tc.net[0].in_features == 5 and tc.net[0].out_features == 8
    ids = {id(p) for p in tc.net.parameters()}
    assert ids == {id(p) for g in tc.optimizer.param_groups for p in g["params"]}


class PatchCritic(Critic):
    """The docs' example of a user's own adversarial term (explanation/disentangling-models.md):
    a hinge patch critic on the reconstructions, stepped by the same loop."""

    def __init__(self, weight=0.1, channels=1, width=8, optimizer=None):
        net = torch.nn.Sequential(torch.nn.Conv2d(channels, width, 4, 2, 1), torch.nn.LeakyReLU(0.2),
                                  torch.nn.Conv2d(width, 1, 4, 1, 1))
        super().__init__(weight, net, optimizer)

    def __call__(self, out, x, y, model, reduction):
        return -self.held(out.x_hat).flatten(1).mean(1)

    def critic_loss(self, out, x, y, model):
        real, fake = self.net(y), self.net(out.x_hat.detach().float())
        loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        return loss, {"margin": (real.mean() - fake.mean()).detach()}


def test_a_users_own_critic_is_configuration_and_learns(compose_cfg, tmp_path):
    cfg = compose_cfg(["dataset=digits", "model=conv", "model.channels=[8,16]", "loss=bce",
                       "train.epochs=3", "train.threads=1", "frames.enabled=false", "eval.enabled=false",
                       "device=cpu", "+loss.terms.critic={_target_: test_disentangling_models.PatchCritic, "
                       "optimizer: {_target_: torch.optim.Adam, lr: 2.0e-4, betas: [0.5, 0.9]}}"])
    train(cfg, tmp_path / "run")
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    margin = [float(r["train_critic_margin"]) for r in rows]
    assert margin[-1] > margin[0] and margin[-1] > 0.02, margin    # scores targets above outputs
    saved = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert set(saved["loss"]["critic"]) == {"net", "optimizer"} and saved["loss"]["critic"]["optimizer"]["state"]
    assert not any(k.startswith("critic") or "net." in k for k in saved["model"])   # not the model's


class KillAt(Term):
    """A zero loss term that ends training at a given training-mode call (1 = the pre-flight
    check): with SIGTERM (the run saves mid-epoch and stops) or with an exception nothing
    catches (a SIGKILL: nothing is saved beyond the last epoch's checkpoint). Once only: it
    leaves `marker` behind, so the resumed run (same config) is left alone."""

    def __init__(self, call, marker, how="sigterm", weight=0.0):
        super().__init__(weight)
        self.call, self.marker, self.how, self.calls = call, marker, how, 0

    def __call__(self, out, x, y, model, reduction):
        if model.training:
            self.calls += 1
            if self.calls == self.call and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                if self.how == "sigterm":
                    os.kill(os.getpid(), signal.SIGTERM)
                else:
                    raise Killed()
        return torch.zeros(len(x))


class Killed(BaseException):
    """As abrupt as a SIGKILL for the loop: no handler saves anything."""


def resume_cfg(compose_cfg, loss):
    # 20 steps per epoch (1257 digits, batch 64): call 32 is epoch 2, step 11
    return compose_cfg([*TINY, f"loss={loss}", "train.epochs=3", "loss.terms.tc.optimizer.lr=1e-3"
                        if loss == "factorvae" else "loss.terms.capacity.anneal_steps=50"])


def stop_then_resume(cfg, tmp_path, call: int = 32, how: str = "sigterm", stopped=None):
    """Train `cfg` left alone into tmp_path/whole, and into tmp_path/run stopped at training-mode
    call `call` (KillAt: SIGTERM, or a kill nothing catches), then resumed from its folder;
    `stopped(run)` looks at the folder in between. Returns (whole, run)."""
    with open_dict(cfg):
        cfg.loss.terms.kill = {"_target_": "test_disentangling_models.KillAt", "call": call,
                               "marker": str(tmp_path / "killed"), "how": how}
    whole, run = tmp_path / "whole", tmp_path / "run"
    (tmp_path / "killed").touch()
    train(cfg, whole)                                   # left alone
    (tmp_path / "killed").unlink()
    with pytest.raises(Interrupted if how == "sigterm" else Killed):
        train(cfg, run)
    if stopped:
        stopped(run)
    train(cfg, run)                                     # resumes from the run folder's last.pt
    return whole, run


def assert_same_end(whole, run) -> dict:
    """The resumed run ends as the one left alone: weights, the loss's own state and every
    metrics row (but timings) equal bit for bit. Returns the final checkpoint."""
    a, b = (checkpoint.load(r / "checkpoints" / "last.pt") for r in (whole, run))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert_equal_state(a["loss"], b["loss"])
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]
    assert strip(read_csv(whole / "metrics.csv")) == strip(read_csv(run / "metrics.csv"))
    return a


@pytest.mark.parametrize("loss,how", [("factorvae", "sigterm"), ("factorvae", "kill"),
                                      ("beta_vae_capacity", "sigterm")])
def test_a_stopped_or_killed_run_resumes_exactly(compose_cfg, tmp_path, loss, how):
    def stopped(run):
        saved = checkpoint.load(run / "checkpoints" / "last.pt")
        assert saved["epoch"] == 1 and (saved["partial"]["step"] == 11 if how == "sigterm"
                                        else saved["partial"] is None)
    end = assert_same_end(*stop_then_resume(resume_cfg(compose_cfg, loss), tmp_path, how=how,
                                            stopped=stopped))
    assert end["loss"] and end["loss"] != {}            # the critic / the step count was saved


def assert_equal_state(a, b, where="loss"):
    """Nested checkpoint state (dicts, lists, tensors, numbers) equal bit for bit."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            assert_equal_state(u, v, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_a_loss_with_trained_state_refuses_a_checkpoint_without_it():
    loss = Loss({"capacity": CapacityKL()})
    with pytest.raises(KeyError, match="no saved state for loss term 'capacity'"):
        loss.load_state_dict({})
    with pytest.raises(KeyError, match="unknown term"):
        loss.load_state_dict({"capacity": {"steps": 3}, "other": {}})
    assert Loss({"dip": DIP()}).state_dict() == {} and Loss({"dip": DIP()}).auxiliary_step(None, None, None, None) == {}


def identity_codes(n=8, d=3):
    """n codes whose batch covariance (divided by n) is exactly the identity: orthonormal
    columns orthogonal to the constant vector, scaled by sqrt(n)."""
    a = torch.randn(n, d + 1, dtype=torch.float64)
    a[:, 0] = 1.0
    q, _ = torch.linalg.qr(a)
    return q[:, 1:] * math.sqrt(n)


def test_dip_penalty_is_zero_exactly_when_the_covariance_is_the_identity():
    torch.manual_seed(0)
    mu = identity_codes() + 5.0        # the mean does not matter: a covariance
    zero = torch.full_like(mu, -80.0)  # posterior variances ~ 0
    torch.testing.assert_close(dip_covariance(mu, zero, "i"), torch.eye(3, dtype=torch.float64))
    for kind in ("i", "ii"):
        out = Output(None, mu, {"mu": mu, "logvar": zero})
        assert DIP(type=kind)(out, None, None, None, "sum").abs().max() < 1e-9
    # type ii counts the posterior variances: Cov[mu] = I/2 plus E[sigma^2] = 1/2 is the identity
    half = identity_codes() / math.sqrt(2)
    out = Output(None, half, {"mu": half, "logvar": torch.full_like(half, math.log(0.5))})
    assert DIP(type="ii")(out, None, None, None, "sum").abs().max() < 1e-9
    assert DIP(type="i", lambda_od=1.0)(out, None, None, None, "sum")[0].item() == pytest.approx(10 * 3 * 0.25)


def test_dip_penalty_by_hand_when_it_is_not():
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    # off-diagonal 2 * 0.5² weighted λ_od, diagonal (2 - 1)² + 0 weighted λ_d
    assert dip_penalty(cov, 3.0, 7.0).item() == pytest.approx(3.0 * 0.5 + 7.0 * 1.0)
    torch.manual_seed(0)
    mu = torch.randn(6, 2) @ torch.tensor([[1.0, 0.8], [0.0, 0.3]])   # correlated
    out = Output(None, mu, {"mu": mu, "logvar": torch.zeros_like(mu)})
    values = DIP(type="i", lambda_od=2.0)(out, None, None, None, "sum")
    c = torch.cov(mu.T, correction=0)
    hand = 2.0 * 2 * c[0, 1] ** 2 + 20.0 * ((c[0, 0] - 1) ** 2 + (c[1, 1] - 1) ** 2)
    assert values.shape == (6,) and torch.allclose(values, hand.expand(6)) and hand > 0
    assert DIP(type="ii").lambda_d == DIP(type="ii").lambda_od == 10.0 and DIP(type="i").lambda_d == 100.0
    with pytest.raises(ConfigError, match="type must be one of i, ii"):
        DIP(type="iii")


def test_capacity_rises_linearly_to_c_max_then_holds():
    term = CapacityKL(weight=1000.0, c_max=25.0, anneal_steps=100)
    assert [term.capacity(s) for s in (0, 1, 40, 100, 101, 10**6)] == [0.0, 0.25, 10.0, 25.0, 25.0, 25.0]
    assert CapacityKL(c_max=5.0, anneal_steps=0).capacity(0) == 5.0
    loss = Loss({"capacity": term})
    mu = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    out = Output(None, mu, {"mu": mu, "logvar": torch.zeros_like(mu)})
    for _ in range(40):                 # the loop's per-batch call, after the model's step
        loss.auxiliary_step(out, None, None, None)
    assert term.steps == 40 and loss.state_dict() == {"capacity": {"steps": 40}}
    terms = loss(out, None, None, None)
    # KL per sample 0.5 and 2.0 (mu²/2): batch mean 1.25; C = 10: the gap 8.75, weighted γ
    assert terms["capacity_kl"].item() == pytest.approx(1.25)
    assert terms["capacity_c"].item() == pytest.approx(10.0)
    assert terms["capacity_gap"].item() == pytest.approx(8.75)
    assert terms["loss"].item() == pytest.approx(1000.0 * 8.75)


@pytest.mark.slow     # three processes: about 50 s on two shared cores
def test_factorvae_stopped_by_sigterm_resumes_exactly_with_aexp_train_resume(tmp_path):
    """Through the real entry point: SIGTERM mid-run, then the command the run prints."""
    args = ["train", *TINY, "loss=factorvae", "train.epochs=3", "train.batch_size=16"]
    aexp(*args, f"hydra.run.dir={tmp_path / 'whole'}")                     # left alone
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "aexp.cli", *args, f"hydra.run.dir={run}"], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not (run / "checkpoints" / "last.pt").exists():
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.02)
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert f"resume with: aexp train resume={run}" in err
    assert "resuming from" in aexp("train", f"resume={run}").stderr
    a, b = (checkpoint.load(r / "checkpoints" / "last.pt") for r in (tmp_path / "whole", run))
    assert a["epoch"] == b["epoch"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert_equal_state(a["loss"], b["loss"])
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]
    assert strip(read_csv(tmp_path / "whole" / "metrics.csv")) == strip(read_csv(run / "metrics.csv"))


AVERAGE = """
import sys, torch
from aexp.losses.adversarial import average_gradients
rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
net = torch.nn.Linear(2, 1)
for p in net.parameters():
    p.grad = torch.full_like(p, float(rank + 1))
average_gradients(net)
torch.save([p.grad for p in net.parameters()], f"{out}.{rank}")
torch.distributed.destroy_process_group()
"""


def test_under_torchrun_a_critics_gradients_are_averaged_over_processes(tmp_path):
    """Each process trains its copy of the critic on its shard: averaged gradients keep the
    copies equal (1 and 2 -> 1.5 on both). Two gloo processes, as torchrun would start."""
    two_gloo_processes(AVERAGE, tmp_path / "store", tmp_path / "grads")
    for rank in (0, 1):
        for g in torch.load(tmp_path / f"grads.{rank}"):
            assert torch.equal(g, torch.full_like(g, 1.5))
