"""Objectives on a Gaussian posterior q(z|x) = N(mu, diag(exp(logvar))) beyond the VAE's KL:
the importance-weighted bound (IWAE), the β-TCVAE split of the KL into index-code mutual
information, total correlation and dimension-wise KL, and the WAE's MMD against the prior.
Also the log-densities and importance weights they share with the evaluation's NLL
(`report/measures.py` uses these, so a k = 1 IWAE and the reported ELBO are one computation).

The prior is N(0, I). Every term returns one value per sample (the MMD, a batch statistic, the
same value for each sample), in nats where it is a log-likelihood."""
import math

import torch

from aexp.errors import ConfigError
from aexp.losses.core import Term, decoder_with

LIKELIHOODS = ("bernoulli", "gaussian")


def gaussian_log_density(z: torch.Tensor, mu, logvar) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) per element (broadcasting)."""
    return -0.5 * (((z - mu) ** 2) / logvar.exp() + logvar + math.log(2 * math.pi))


def gaussian_log_prob(z: torch.Tensor, mu, logvar) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension."""
    return gaussian_log_density(z, mu, logvar).sum(-1)


def bernoulli_log_prob(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """log p(x | p) of Bernoulli pixels, summed per sample (x in {0,1}, or [0,1] as a
    cross-entropy); p is clamped away from 0 and 1 as BCE does."""
    p = p.float().clamp(1e-7, 1 - 1e-7)
    return (x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)


def decoder_log_prob(likelihood: str, sigma: float = 0.1):
    """log p(x | z) as a function (x, z, decode) for a Bernoulli or fixed-sigma Gaussian decoder."""
    if likelihood == "bernoulli":
        return lambda x, z, decode: bernoulli_log_prob(x, decode(z))
    log_var = 2 * math.log(sigma)
    return lambda x, z, decode: gaussian_log_prob(
        x.flatten(1), decode(z).float().flatten(1), torch.full_like(x.flatten(1), log_var))


def importance_log_weights(x, mu, logvar, log_px, k: int, chunk: int = 100,
                           generator=None, log_prior=None) -> torch.Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for z_k ~ q(z|x), shape [N, k].
    `log_px(x, z)` gives log p(x|z) per sample; `log_prior(z)` log p(z) per code (z [..., D]),
    N(0, I) when None (a VampPrior model gives its own). Drawn `chunk` samples at a time so memory stays
    at N·chunk decoder outputs; differentiable (IWAE trains through it)."""
    out = []
    std = torch.exp(0.5 * logvar)
    zero = torch.zeros_like(mu)
    for start in range(0, k, chunk):
        m = min(chunk, k - start)
        eps = torch.randn((m, *mu.shape), device=mu.device, dtype=mu.dtype, generator=generator)
        z = mu + std * eps                                  # [m, N, D]
        flat = z.reshape(-1, mu.shape[-1])
        xs = x.unsqueeze(0).expand(m, *x.shape).reshape(-1, *x.shape[1:])
        lw = (log_px(xs, flat).view(m, -1)
              + (gaussian_log_prob(z, zero, zero) if log_prior is None else log_prior(z))
              - gaussian_log_prob(z, mu, logvar))
        out.append(lw.T)
    return torch.cat(out, 1)


def log_weights(model, extras, x, log_px, k: int, chunk: int = 100, generator=None,
                log_prior=None) -> torch.Tensor:
    """log p(x, z) - log q(z|x) for k importance samples, [N, k]: the model's own
    `importance_log_weights` where it has one (a hierarchical VAE: aexp.models.base), else
    `importance_log_weights` on the Gaussian posterior in `extras` (mu, logvar)."""
    own = getattr(model, "importance_log_weights", None)
    if own is not None:
        return own(extras, x, log_px, k, chunk, generator)
    mu, logvar = extras["mu"].float(), extras["logvar"].float()
    return importance_log_weights(x, mu, logvar, log_px, k, chunk, generator, log_prior)


def _posterior(out, what: str):
    if "mu" not in out.extras or "logvar" not in out.extras:
        raise ConfigError(f"loss term '{what}' needs a VAE model (one with mu and log-variance)")
    return out.extras["mu"].float(), out.extras["logvar"].float()


class IWAE(Term):
    """The negative importance-weighted bound of Burda et al. (2015) with `k` samples,
    -log (1/k Σ w_k), per sample in nats: k = 1 is the negative (single-sample) ELBO, and the
    bound tightens as k grows. The decoder runs k times per sample: training costs about k
    decoder passes a batch. Used alone (it includes the reconstruction); the reduction does
    not apply (a log-likelihood is a sum over pixels)."""

    def __init__(self, weight: float = 1.0, k: int = 50, likelihood: str = "bernoulli",
                 sigma: float = 0.1, chunk: int = 100):
        super().__init__(weight)
        if k < 1:
            raise ConfigError(f"iwae k must be at least 1, got {k}")
        if likelihood not in LIKELIHOODS:
            raise ConfigError(f"iwae likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
        self.k, self.chunk, self.log_px = int(k), int(chunk), decoder_log_prob(likelihood, sigma)

    uses_labels = True   # a conditional model's decoder needs them (losses.core.decoder_with)

    def __call__(self, out, x, y, model, reduction, labels=None):
        _posterior(out, "iwae")
        log_px = lambda target, z: self.log_px(target, z, decoder_with(model, labels))
        lw = log_weights(model, out.extras, y.float(), log_px, self.k, self.chunk)
        return -(torch.logsumexp(lw, 1) - math.log(self.k))


class TCDecomposition(Term):
    """β-TCVAE (Chen et al. 2018): KL(q(z|x) || p(z)) split, on one posterior sample per input,
    into index-code mutual information (`mi`), total correlation (`tc`) and dimension-wise KL
    (`dimkl`), weighted alpha, beta, gamma (times `weight`); each part is logged. q(z) and its
    marginals are estimated by minibatch-weighted sampling over the batch, with N =
    `dataset_size` (the training split's size, passed in when the run is built; None: the batch
    size). The three parts sum to the sampled KL, log q(z|x) - log p(z)."""

    def __init__(self, weight: float = 1.0, alpha: float = 1.0, beta: float = 6.0,
                 gamma: float = 1.0, dataset_size: int | None = None):
        super().__init__(weight)
        self.parts = {"mi": float(alpha), "tc": float(beta), "dimkl": float(gamma)}
        self.dataset_size = dataset_size

    def part_weight(self, part: str, epoch) -> float:
        return self.weight_at(epoch) * self.parts[part]

    def __call__(self, out, x, y, model, reduction) -> dict:
        mu, logvar = _posterior(out, "tc")
        b, d = mu.shape
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        log_qz_x = gaussian_log_prob(z, mu, logvar)                                  # [B]
        log_pz = gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
        # log q(z_i | x_j) per dimension, for every pair: [B, B, D]
        pair = gaussian_log_density(z[:, None], mu[None], logvar[None])
        norm = math.log(b * (self.dataset_size or b))
        log_qz = torch.logsumexp(pair.sum(2), 1) - norm
        log_prod_qzd = (torch.logsumexp(pair, 1) - norm).sum(1)
        return {"mi": log_qz_x - log_qz, "tc": log_qz - log_prod_qzd, "dimkl": log_prod_qzd - log_pz}


def imq_mmd(a: torch.Tensor, b: torch.Tensor, scales=(0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)) -> torch.Tensor:
    """Unbiased MMD² between samples `a` and `b` [N, D] with the inverse multiquadratic kernel
    C / (C + |x - y|²), C = 2 D s for each scale s, summed over the scales (Tolstikhin et al. 2018)."""
    n, d = a.shape
    off = ~torch.eye(n, dtype=torch.bool, device=a.device)
    total = a.new_zeros(())
    for s in scales:
        c = 2.0 * d * s
        k = lambda p, q: c / (c + torch.cdist(p, q) ** 2)
        total = total + (k(a, a)[off].mean() + k(b, b)[off].mean() - 2 * k(a, b).mean())
    return total


class MMD(Term):
    """The WAE-MMD penalty: MMD² between the batch's codes and as many draws from the prior
    N(0, I), inverse multiquadratic kernel. A batch statistic: every sample gets its value."""

    def __call__(self, out, x, y, model, reduction):
        z = out.z.flatten(1).float()
        if len(z) < 2:
            raise ConfigError("the MMD term needs batches of at least 2 samples")
        return imq_mmd(z, torch.randn_like(z)).expand(len(z))
