"""Closed-form checks of the loss terms: Gaussian KL by hand, the continuous-Bernoulli
normaliser by numerical integration, the contractive penalty by finite differences (and its
gradient), triplets, KL warm-up and the reductions."""
import math

import pytest
import torch
from torch import nn

from aexp.errors import ConfigError
from aexp.losses import (MSE, ColorTriplet, Contractive, GaussianKL, LabelTriplet, Loss,
                         cb_log_norm, triplet_margin)
from aexp.models import Output


def test_gaussian_kl_matches_hand_computation():
    mu = torch.tensor([[0.5, -1.0]])
    logvar = torch.tensor([[math.log(0.25), 0.0]])
    # KL = sum_i 0.5 * (sigma_i^2 + mu_i^2 - 1 - log sigma_i^2)
    hand = 0.5 * (0.25 + 0.25 - 1 - math.log(0.25)) + 0.5 * (1 + 1 - 1 - 0)
    out = Output(None, mu, {"mu": mu, "logvar": logvar})
    assert GaussianKL()(out, None, None, None, "sum").item() == pytest.approx(hand, rel=1e-6)
    assert GaussianKL()(out, None, None, None, "mean").item() == pytest.approx(hand / 2, rel=1e-6)


def test_kl_needs_a_vae():
    with pytest.raises(ConfigError, match="needs a VAE"):
        GaussianKL()(Output(None, torch.zeros(1, 2), {}), None, None, None, "sum")


def test_kl_warmup_is_linear_then_flat():
    loss = Loss({"kl": GaussianKL(weight=4.0, warmup_epochs=4)})
    weights = []
    for epoch in (1, 2, 4, 9, None):
        loss.set_epoch(epoch)
        weights.append(loss.terms["kl"].weight_at(loss.epoch))
    assert weights == [1.0, 2.0, 4.0, 4.0, 4.0]


def _log_norm_by_integration(lam: float) -> float:
    """-log of the integral over x in [0, 1] of lam^x (1 - lam)^(1 - x), by Simpson's rule."""
    x = torch.linspace(0, 1, 20001, dtype=torch.float64)
    f = lam ** x * (1 - lam) ** (1 - x)
    h = 1 / 20000
    integral = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    return -math.log(float(integral))


@pytest.mark.parametrize("lam", [1e-4, 1e-2, 0.2, 0.45, 0.499, 0.4999, 0.5, 0.5001, 0.501,
                                 0.55, 0.8, 0.99, 1 - 1e-4])
def test_continuous_bernoulli_log_normaliser_against_integration(lam):
    want = _log_norm_by_integration(lam)
    got64 = cb_log_norm(torch.tensor([lam], dtype=torch.float64)).item()
    lam32 = torch.tensor([lam], dtype=torch.float32)    # float32 rounds lam itself near 1
    got32 = cb_log_norm(lam32).item()
    assert got64 == pytest.approx(want, abs=1e-8)
    assert got32 == pytest.approx(_log_norm_by_integration(float(lam32)), abs=1e-5)


def test_continuous_bernoulli_normaliser_is_smooth_and_has_gradients_near_half():
    lam = torch.tensor([0.49, 0.4999, 0.5, 0.5001, 0.51], requires_grad=True)
    v = cb_log_norm(lam)
    v.sum().backward()
    assert torch.isfinite(v).all() and torch.isfinite(lam.grad).all()
    # d/dlam log C = (8/3) (lam - 1/2) + O(.) near 1/2: antisymmetric, zero at the centre
    assert lam.grad[2].abs() < 1e-6 and lam.grad[0] < 0 < lam.grad[-1]


class TanhEncoder(nn.Module):
    """A tiny non-linear encoder with a known, input-dependent Jacobian."""

    def __init__(self, d_in=5, d_z=3):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(d_in, d_z).double()

    def encode(self, x):
        return torch.tanh(self.lin(x))


def test_contractive_penalty_matches_finite_differences_and_has_a_gradient():
    model = TanhEncoder()
    x = torch.randn(4, 5, dtype=torch.float64)
    got = Contractive()(None, x, x, model, "sum")
    eps, want = 1e-6, torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        for i in range(5):
            step = torch.zeros_like(x)
            step[:, i] = eps
            col = (model.encode(x + step) - model.encode(x - step)) / (2 * eps)   # dz/dx_i
            want += col.pow(2).sum(1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    got.sum().backward()
    assert model.lin.weight.grad is not None and model.lin.weight.grad.abs().sum() > 0


def test_contractive_refuses_wide_codes():
    with pytest.raises(ConfigError, match="contractive"):
        Contractive(max_latent=2)(None, torch.randn(2, 5, dtype=torch.float64),
                                  None, TanhEncoder(), "sum")


def test_triplet_margin_is_zero_when_well_separated_and_positive_otherwise():
    za = torch.zeros(3, 2)
    zp = torch.full((3, 2), 0.1)
    far, near = torch.full((3, 2), 5.0), torch.full((3, 2), 0.05)
    assert triplet_margin(za, zp, far, margin=1.0).abs().max() == 0
    assert (triplet_margin(za, zp, near, margin=1.0) > 0).all()


class Scale(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s

    def encode(self, x):
        return self.s * x


def test_color_triplet_zero_when_latent_separates_colors():
    torch.manual_seed(0)
    x = torch.rand(64, 3)
    term = ColorTriplet(margin=0.1, nudge=0.001, min_distance=0.3)
    # latent = 100 x colour: nudged positives stay close, negatives at least 30 away
    assert term(Output(None, 100 * x, {}), x, x, Scale(100.0), "sum").abs().max() == 0
    # a collapsed latent separates nothing: every triplet costs the margin
    collapsed = term(Output(None, 0 * x, {}), x, x, Scale(0.0), "sum")
    torch.testing.assert_close(collapsed, torch.full((64,), 0.1))


def test_label_triplet_zero_for_separated_classes():
    labels = torch.tensor([0, 0, 1, 1])
    z = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    term = LabelTriplet(margin=1.0)
    assert term(Output(None, z, {}), None, None, None, "sum", labels=labels).abs().max() == 0
    mixed = torch.tensor([0, 1, 0, 1])
    assert term(Output(None, z, {}), None, None, None, "sum", labels=mixed).min() > 0
    with pytest.raises(ConfigError, match="labels"):
        term(Output(None, z, {}), None, None, None, "sum")


def test_loss_returns_every_term_and_weighted_total():
    x = torch.rand(2, 1, 2, 2)
    out = Output(x + 0.5, None, {})
    loss = Loss({"a": MSE(weight=2.0), "b": MSE(weight=0.5)}, reduction="mean")
    terms = loss(out, x, x, None)
    assert set(terms) == {"a", "b", "loss"}
    assert terms["a"].item() == pytest.approx(0.25)
    assert terms["loss"].item() == pytest.approx(2.5 * 0.25)
    assert Loss({"a": MSE()}, "sum")(out, x, x, None)["a"].item() == pytest.approx(1.0)
