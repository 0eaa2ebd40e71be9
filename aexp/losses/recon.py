"""Reconstruction terms: compare the model's output `out.x_hat` with the target `y`."""
import math

import torch
import torch.nn.functional as F

from aexp.losses.core import Term, per_sample


class MSE(Term):
    """Squared error between reconstruction and target."""

    def __call__(self, out, x, y, model, reduction):
        return per_sample((out.x_hat - y) ** 2, reduction)


class L1(Term):
    """Absolute error between reconstruction and target."""

    def __call__(self, out, x, y, model, reduction):
        return per_sample((out.x_hat - y).abs(), reduction)


class BCE(Term):
    """Binary cross-entropy; the model's output must lie in [0, 1] (sigmoid output)."""

    def __call__(self, out, x, y, model, reduction):
        # Written out rather than F.binary_cross_entropy: that one refuses to run under CUDA
        # autocast (train.precision=bf16), and this is faster on the CPU. Same values: the
        # logs are clamped at -100 as PyTorch's are, and computed in fp32.
        p = out.x_hat.float().clamp(0, 1)
        bce = -(y * torch.log(p).clamp_min(-100) + (1 - y) * torch.log1p(-p).clamp_min(-100))
        return per_sample(bce, reduction)


def cb_log_norm(lam: torch.Tensor, taylor_band: float = 1e-2) -> torch.Tensor:
    """log C(lambda) of the continuous Bernoulli (Loaiza-Ganem & Cunningham 2019), where
    C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda), with C(1/2) = 2.

    The closed form is 0/0 at lambda = 1/2 and loses precision near it, so within
    |lambda - 1/2| < taylor_band it uses the series 2 artanh(t)/t = 2 (1 + t^2/3 + t^4/5 + ...),
    t = 1 - 2 lambda (error below t^6/7 ~ 1e-14 there)."""
    t = 1.0 - 2.0 * lam
    near = t.abs() < 2 * taylor_band
    lam_far = torch.where(near, torch.full_like(lam, 0.25), lam)  # keeps the unused branch finite
    # 2 artanh(1 - 2 lam) = log((1 - lam) / lam), written with log1p: exact near 0 and 1 too
    exact = torch.log((torch.log1p(-lam_far) - torch.log(lam_far)) / (1.0 - 2.0 * lam_far))
    t2 = t * t
    series = math.log(2.0) + torch.log1p(t2 / 3.0 + t2 * t2 / 5.0)
    return torch.where(near, series, exact)


class ContinuousBernoulli(Term):
    """Negative log-likelihood of the continuous Bernoulli: BCE minus log C(x_hat). The proper
    likelihood for [0, 1]-valued pixels; output in [0, 1] (clamped away from 0 and 1)."""

    def __init__(self, weight: float = 1.0, eps: float = 1e-6):
        super().__init__(weight)
        self.eps = eps

    def __call__(self, out, x, y, model, reduction):
        lam = out.x_hat.clamp(self.eps, 1 - self.eps)
        nll = F.binary_cross_entropy(lam, y, reduction="none") - cb_log_norm(lam)
        return per_sample(nll, reduction)
