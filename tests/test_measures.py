"""Metric functions against hand-computed values and a closed-form likelihood."""
import math

import numpy as np
import pytest
import torch

from aexp.report import measures
from aexp.report.evaluate import colorization, latent_stats


def test_mse_mae_psnr_of_a_known_error():
    target = torch.rand(4, 1, 8, 8) * 0.8
    pred = target + 0.1
    assert torch.allclose(measures.mse(pred, target), torch.full((4,), 0.01), atol=1e-6)
    assert torch.allclose(measures.mae(pred, target), torch.full((4,), 0.1), atol=1e-6)
    assert torch.allclose(measures.psnr(pred, target), torch.full((4,), 20.0), atol=1e-3)
    assert torch.allclose(measures.psnr(pred, target, data_range=2.0),
                          torch.full((4,), 20 + 20 * math.log10(2)), atol=1e-3)


def test_ssim_identical_is_one_and_perturbed_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    assert torch.allclose(measures.ssim(x, x), torch.ones(2), atol=1e-5)
    # An 11x11 image has one window position: SSIM is the Gaussian-weighted formula, computed here by hand.
    a = torch.rand(1, 1, 11, 11, generator=g)
    b = (a + 0.2 * torch.rand(1, 1, 11, 11, generator=g)).clamp(0, 1)
    r = np.arange(11) - 5
    w = np.exp(-r ** 2 / (2 * 1.5 ** 2))
    w = np.outer(w, w) / np.outer(w, w).sum()
    A, B = a.double().numpy()[0, 0], b.double().numpy()[0, 0]
    ma, mb = (w * A).sum(), (w * B).sum()
    va, vb = (w * A * A).sum() - ma ** 2, (w * B * B).sum() - mb ** 2
    cov = (w * A * B).sum() - ma * mb
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    expected = (2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
    got = float(measures.ssim(b, a))
    assert got == pytest.approx(expected, abs=1e-5)
    assert got < 0.99
    assert float(measures.ssim(1 - a, a)) < 0   # an inverted image is anti-correlated


def test_accuracy_within_bounds_on_a_constructed_example():
    target = torch.full((1, 2, 2, 5), 0.5, dtype=torch.float64)   # 20 a,b values
    err = torch.tensor([0.0, 0.005, 0.0099, 0.03, 0.0499, 0.07, 0.0999, 0.2, 0.3, 0.4] * 2, dtype=torch.float64)
    pred = target + err.view(1, 2, 2, 5) * torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(10).view(1, 2, 2, 5)
    acc = measures.within_bound(pred, target, [0.01, 0.05, 0.1])
    # within 0.01: 0, .005, .0099 -> 3/10; within 0.05: +.03, .0499 -> 5/10; within 0.1: +.07, .0999 -> 7/10
    assert torch.allclose(acc.double(), torch.tensor([[0.3, 0.5, 0.7]], dtype=torch.float64), atol=1e-6)
    rep = colorization({"x_hat": pred, "y": target}, [0.01, 0.05, 0.1])
    assert rep["accuracy"] == pytest.approx({"0.01": 0.3, "0.05": 0.5, "0.1": 0.7})
    curve = rep["curve"]["accuracy"]
    assert curve[0] == pytest.approx(0.1) and curve[-1] == pytest.approx(0.8)
    assert all(a <= b for a, b in zip(curve, curve[1:]))   # the curve never falls


def test_importance_sampled_nll_of_a_linear_gaussian_model_matches_closed_form():
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s²I)  =>  p(x) = N(b, WWᵀ + s²I) exactly."""
    torch.manual_seed(0)
    dz, dx, s = 2, 4, 0.5
    W, b = torch.randn(dx, dz, dtype=torch.float64), torch.randn(dx, dtype=torch.float64)
    x = (torch.randn(6, dz, dtype=torch.float64) @ W.T + b + s * torch.randn(6, dx, dtype=torch.float64))
    true = torch.distributions.MultivariateNormal(b, W @ W.T + s ** 2 * torch.eye(dx, dtype=torch.float64))
    true_nll = -true.log_prob(x)
    # An imperfect (diagonal, shifted, widened) encoder: IS still converges to the true likelihood.
    prec = torch.eye(dz, dtype=torch.float64) + W.T @ W / s ** 2
    cov = torch.linalg.inv(prec)
    mu = (x - b) @ W @ cov.T / s ** 2 + 0.1
    logvar = torch.log(torch.diagonal(cov) * 1.5).expand_as(mu)
    logvar_x = torch.full((dx,), 2 * math.log(s), dtype=torch.float64)
    log_px = lambda xs, z: measures.gaussian_log_prob(xs, z @ W.T + b, logvar_x)
    gen = torch.Generator().manual_seed(1)
    lw = measures.importance_log_weights(x, mu, logvar, log_px, k=20000, chunk=2000, generator=gen)
    nll, elbo = measures.nll_and_elbo(lw)
    assert torch.allclose(nll, true_nll, atol=0.02), (nll, true_nll)
    assert torch.all(elbo < -nll) and torch.all(-elbo - true_nll > 0.01)   # the ELBO is a strict bound here
    # With one sample the estimate is just the ELBO of that sample.
    one = measures.importance_log_weights(x, mu, logvar, log_px, k=1, generator=gen)
    n1, e1 = measures.nll_and_elbo(one)
    assert torch.allclose(n1, -e1)


def test_bernoulli_log_prob_by_hand():
    x = torch.tensor([[1.0, 0.0, 1.0]])
    p = torch.tensor([[0.9, 0.2, 0.5]])
    assert float(measures.bernoulli_log_prob(x, p)) == pytest.approx(math.log(0.9 * 0.8 * 0.5), abs=1e-6)


def test_latent_stats_spread_and_vae_sigma():
    z = torch.stack([torch.linspace(-1, 1, 101), torch.zeros(101)], 1)
    pred = {"z": z, "mu": z, "logvar": torch.full_like(z, math.log(0.25))}
    st = latent_stats(pred)
    assert st["dim"] == 2 and st["std_min"] == 0.0
    assert st["std"][0] == pytest.approx(float(z[:, 0].std()), abs=1e-5)
    assert st["posterior_sigma_mean"] == pytest.approx(0.5)
    assert st["active_units"] == 1   # only the first dimension varies across the data
