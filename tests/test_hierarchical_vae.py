"""The two-stochastic-layer VAE (model=hvae, aexp/models/hierarchical.py): its joint importance
weight by hand on a tiny model; the KL hook makes loss=vae exactly the one-sample ELBO, and
loss=iwae with k = 1 the same number; the k = 50 bound sits above the ELBO on the same images;
training lowers the loss, a killed run resumes exactly, and `aexp eval` scores its NLL under its
own hierarchy and draws samples from it."""
import json
import math
from types import SimpleNamespace

import torch
from torch.distributions import Normal

from aexp.assemble import build_loss
from aexp.io import read_csv
from aexp.losses.variational import bernoulli_log_prob, log_weights
from aexp.models.hierarchical import HierarchicalVAE
from aexp.report import sample
from aexp.report.measures import nll_and_elbo
from aexp.run.train import train
from test_disentangling_models import assert_same_end, stop_then_resume

TINY = ["dataset=digits", "model=hvae", "model.hidden1=[16]", "model.latent1=4",
        "model.hidden2=[8]", "model.latent2=2", "train.batch_size=64", "train.threads=1",
        "frames.enabled=false", "eval.enabled=false", "device=cpu"]


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return HierarchicalVAE((1, 2, 2), (1, 2, 2), hidden1=[3], latent1=2, hidden2=[3], latent2=1)


def log_px_of(model):
    return lambda x, z: bernoulli_log_prob(x, model.decode(z))


def test_the_joint_log_weight_by_hand():
    model = tiny_model().eval()
    x = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]], [[[0.0, 0.0], [1.0, 0.0]]]])
    extras = model(x).extras
    lw = model.importance_log_weights(extras, x, log_px_of(model), 3, chunk=2,
                                      generator=torch.Generator().manual_seed(5))
    # the same draws, in the same order: z1's noise for a chunk, then z2's, chunk after chunk
    g = torch.Generator().manual_seed(5)
    by_hand = torch.zeros(2, 3)
    with torch.no_grad():
        for chunk in ([0, 1], [2]):
            e1 = torch.randn(len(chunk), 2, 2, generator=g)
            e2 = torch.randn(len(chunk), 2, 1, generator=g)
            for j, s in enumerate(chunk):
                for i in range(2):
                    h = torch.tanh(model.q1.body[0](x[i].flatten()))
                    mu1, lv1 = model.q1.mu(h), model.q1.logvar(h)
                    z1 = mu1 + e1[j, i] * torch.exp(0.5 * lv1)
                    h2 = torch.tanh(model.q2.body[0](z1))
                    mu2, lv2 = model.q2.mu(h2), model.q2.logvar(h2)
                    z2 = mu2 + e2[j, i] * torch.exp(0.5 * lv2)
                    hp = torch.tanh(model.p1.body[0](z2))
                    pm, plv = model.p1.mu(hp), model.p1.logvar(hp)
                    p = torch.sigmoid(model.decoder[2](torch.tanh(model.decoder[0](z1))))
                    log_px = (x[i].flatten() * p.log() + (1 - x[i].flatten()) * (1 - p).log()).sum()
                    log_p = (log_px + Normal(pm, torch.exp(0.5 * plv)).log_prob(z1).sum()
                             + Normal(0.0, 1.0).log_prob(z2).sum())
                    log_q = (Normal(mu1, torch.exp(0.5 * lv1)).log_prob(z1).sum()
                             + Normal(mu2, torch.exp(0.5 * lv2)).log_prob(z2).sum())
                    by_hand[i, s] = log_p - log_q
    assert torch.allclose(lw, by_hand, atol=1e-5)
    assert log_weights(model, extras, x, log_px_of(model), 3,
                       generator=torch.Generator().manual_seed(5)).shape == (2, 3)


def test_loss_vae_is_the_one_sample_elbo_and_iwae_k1_the_same(compose_cfg):
    model = tiny_model(1).train()
    x = torch.rand(6, 1, 2, 2).round()
    vae = build_loss(compose_cfg(["model=hvae", "loss=vae"]).loss)
    iwae = build_loss(compose_cfg(["model=hvae", "loss=iwae", "loss.terms.iwae.k=1"]).loss)
    torch.manual_seed(3)
    out = model(x)
    neg_elbo = vae(out, x, x, model)["loss"]
    torch.manual_seed(3)                               # the same noise: z1's, then z2's
    lw = model.importance_log_weights(out.extras, x, log_px_of(model), 1)
    assert torch.allclose(neg_elbo, -lw.mean(), atol=1e-4)
    torch.manual_seed(3)
    out = model(x)   # (iwae draws its own z1 after forward's: the same distribution, other noise)
    assert torch.isfinite(iwae(out, x, x, model)["loss"])
    # evaluation: the KL hook's terms are log q - log p at the posterior means
    model.eval()
    kl = model(x).extras["kl"]
    assert kl.shape == (6, 2 + 1) and torch.isfinite(kl).all()


def test_the_k50_bound_is_above_the_elbo_on_the_same_images():
    model = tiny_model(2).eval()
    x = torch.rand(40, 1, 2, 2).round()
    with torch.no_grad():
        extras = model(x).extras
        bound = lambda k, seed: nll_and_elbo(model.importance_log_weights(
            extras, x, log_px_of(model), k, generator=torch.Generator().manual_seed(seed)))
        nll_50, _ = bound(50, 1)
        _, elbo = bound(200, 2)          # the ELBO, averaged over 200 independent draws
    assert -nll_50.mean() > elbo.mean()
    assert (-nll_50 > elbo).float().mean() > 0.9


def test_training_lowers_the_loss_and_a_killed_run_resumes_exactly(compose_cfg, tmp_path):
    whole, run = stop_then_resume(compose_cfg([*TINY, "train.epochs=3"]), tmp_path)
    assert_same_end(whole, run)
    rows = read_csv(whole / "metrics.csv")
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] and rows[-1]["val_loss"] < rows[0]["val_loss"]


def test_eval_scores_the_nll_under_the_hierarchy_and_samples_it(compose_cfg, tmp_path):
    cfg = compose_cfg([*TINY, "train.epochs=2", "eval.classifier.enabled=false", "eval.tsne=false",
                       "eval.nll_samples=20", "eval.nll_max_images=40", "eval.quality=false"])
    train(cfg, tmp_path / "run")
    from aexp.cli import main
    assert main(["eval", str(tmp_path / "run"), "--no-classifier"]) == 0
    vae = json.loads((tmp_path / "run" / "eval.json").read_text())["vae"]
    assert "p(z2)" in vae["prior"] and 0 < vae["nll"] < 64 * math.log(2) * 2
    assert vae["elbo"] <= -vae["nll"]
    assert (tmp_path / "run" / "pictures" / "samples.png").is_file()
    # `aexp sample --sampler prior` draws z1 through the hierarchy, not N(0, I) codes
    model = tiny_model()
    codes, entry = sample.draw_codes(SimpleNamespace(model=model), "prior", 5, torch.Generator().manual_seed(0))
    assert torch.equal(codes, model.prior_codes(5, torch.Generator().manual_seed(0)))
    assert codes.shape == (5, 2) and "ancestral" in entry["from"]
    z2 = torch.randn(5, 1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean = model.p1(z2)[0]
    assert not torch.allclose(codes, mean) and (codes - mean).abs().max() < 10
