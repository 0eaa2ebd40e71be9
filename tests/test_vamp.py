"""The VampPrior VAE (loss=vamp): its KL term by hand (log q(z|x) minus the log of the mixture of
posteriors at the pseudo-inputs), the pseudo-inputs learn through the real loop and are in the
checkpoint, a killed run resumes exactly, and `aexp sample --sampler vamp` draws from the mixture."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from aexp.assemble import build, build_loss, conf_dir, load_run
from aexp.errors import ConfigError
from aexp.report import sample
from aexp.report.likelihood import vae_likelihood
from conftest import run_cli
from test_disentangling_models import assert_same_end, stop_then_resume

TINY = ["dataset=digits", "model=vae", "model.hidden=[32]", "model.latent_dim=4", "loss=vamp",
        "loss.terms.kl.components=5", "train.batch_size=64", "train.threads=1",
        "frames.enabled=false", "eval.enabled=false", "device=cpu"]


def log_normal(z, mu, logvar):
    return (-0.5 * ((z - mu) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi))).sum(-1)


def test_the_kl_is_log_q_minus_the_log_mixture_by_hand(compose_cfg):
    torch.manual_seed(0)
    cfg = compose_cfg(TINY)
    kl = build_loss(cfg.loss).terms["kl"]
    model = build(cfg.model, in_shape=(1, 8, 8), out_shape=(1, 8, 8)).train()
    x = torch.rand(6, 1, 8, 8)
    out = model(x)
    value = kl(out, x, x, model, "sum")
    assert kl.pseudo.shape == (5, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        pm, pl = model(kl.pseudo).extras["mu"], model(kl.pseudo).extras["logvar"]
    mu, lv, z = out.extras["mu"], out.extras["logvar"], out.z
    log_p = torch.stack([log_normal(z, pm[k], pl[k]) for k in range(5)], 1).logsumexp(1) - math.log(5)
    assert torch.allclose(value, log_normal(z, mu, lv) - log_p, atol=1e-4)
    assert torch.allclose(kl(out, x, x, model, "mean"), value / 4, atol=1e-5)
    with pytest.raises(ConfigError):       # a model without a posterior
        kl(SimpleNamespace(extras={}, z=out.z), x, x, model, "sum")


def test_pseudo_inputs_learn_are_saved_and_a_killed_run_resumes_exactly(compose_cfg, tmp_path):
    end = assert_same_end(*stop_then_resume(compose_cfg([*TINY, "train.epochs=3"]), tmp_path))
    start = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert end["loss"]["kl"]["pseudo"].shape == start.shape
    assert (end["loss"]["kl"]["pseudo"] - start).abs().max() > 1e-3       # they moved


def test_sample_vamp_draws_from_the_mixture(tmp_path, capsys):
    from aexp.cli import main
    run = tmp_path / "vamp"
    assert main(["train", *TINY, "train.epochs=1", "eval.classifier.epochs=1",
                 f"hydra.run.dir={run}"]) == 0
    code, err = run_cli(["sample", run, "--sampler", "vamp", "-n", "40"], capsys)
    assert code == 0, err
    assert np.load(run / "samplers" / "vamp_samples.npy").shape == (40, 1, 8, 8)
    assert "VampPrior" in json.loads((run / "eval.json").read_text())["samplers"]["vamp"]["from"]
    # two far-apart components of tiny spread: every draw sits on one, about half on each
    means = torch.tensor([[5.0, 0, 0, 0], [-5.0, 0, 0, 0]])
    term = sample.VampKL.__new__(sample.VampKL)          # its components stated, not trained
    term.prior_components = lambda model: (means, torch.full((2, 4), -20.0))
    loaded = SimpleNamespace(loss_fn=SimpleNamespace(terms={"kl": term}), model=None)
    z, entry = sample.vamp_codes(loaded, 400, torch.Generator().manual_seed(0))
    near = (z[:, None] - means[None]).norm(dim=-1).min(1).values
    assert near.max() < 1e-3 and 150 < (z[:, 0] > 0).sum() < 250 and "2 learned" in entry["from"]


def test_a_loaded_vamp_run_scores_its_nll_under_its_own_prior(tmp_path):
    from aexp.cli import main
    run = tmp_path / "vamp"
    assert main(["train", *TINY, "train.epochs=1", f"hydra.run.dir={run}"]) == 0
    loaded = load_run(run, device="cpu")
    z = torch.randn(7, 4)
    mu, logvar = loaded.loss_fn.terms["kl"].prior_components(loaded.model)
    by_hand = torch.stack([log_normal(z, mu[k], logvar[k]) for k in range(5)], 1).logsumexp(1) - math.log(5)
    assert torch.allclose(loaded.model.log_prior(z), by_hand, atol=1e-4)
    ev = OmegaConf.load(conf_dir() / "config.yaml").eval
    ev.nll_samples, ev.nll_max_images = 20, 30
    own, _ = vae_likelihood(loaded.model, loaded.data, ev, "cpu")
    del loaded.model.log_prior
    standard, _ = vae_likelihood(loaded.model, loaded.data, ev, "cpu")
    assert "VampPrior" in own["prior"] and standard["prior"] == "N(0, I)"
    assert math.isfinite(own["nll"]) and own["nll"] != standard["nll"]
