"""Regularisers for disentangling beside the VAE's KL: DIP-VAE's moment matching of the code's
covariance to the identity (Kumar et al. 2018) and the annealed-capacity KL of Burgess et al.
(2018). (β-VAE is the KL's weight, aexp.losses.GaussianKL; β-TCVAE is
aexp.losses.TCDecomposition; FactorVAE's adversarial TC is aexp.losses.FactorTC.)"""
import torch

from aexp.errors import ConfigError
from aexp.losses.core import Term, per_sample
from aexp.losses.latent import gaussian_kl
from aexp.losses.variational import _posterior

DIP_TYPES = ("i", "ii")


def dip_covariance(mu: torch.Tensor, logvar: torch.Tensor, kind: str) -> torch.Tensor:
    """The batch's code covariance [D, D] that DIP-VAE drives to the identity: type i, the
    covariance of the posterior means, Cov[mu(x)]; type ii, the covariance of the aggregate
    posterior q(z), Cov[mu(x)] + E[diag(exp(logvar))]. Moments over the batch (divided by B)."""
    centred = mu - mu.mean(0, keepdim=True)
    cov = centred.T @ centred / len(mu)
    return cov if kind == "i" else cov + torch.diag(logvar.exp().mean(0))


def dip_penalty(cov: torch.Tensor, lambda_od: float, lambda_d: float) -> torch.Tensor:
    """λ_od Σ_{i≠j} Cov_ij² + λ_d Σ_i (Cov_ii − 1)²: zero exactly when Cov is the identity."""
    diag = torch.diagonal(cov)
    off = cov - torch.diag(diag)
    return lambda_od * off.pow(2).sum() + lambda_d * (diag - 1).pow(2).sum()


class DIP(Term):
    """DIP-VAE's penalty (Kumar et al. 2018), added to the VAE's loss: the code covariance of the
    batch (`dip_covariance`, type i or ii) matched to the identity, off-diagonal entries weighted
    `lambda_od`, diagonal ones `lambda_d` (null: the paper's choice, 10·λ_od for type i and λ_od
    for type ii). A batch statistic: every sample gets its value; `weight` multiplies it."""

    def __init__(self, weight: float = 1.0, type: str = "i", lambda_od: float = 10.0,
                 lambda_d: float | None = None):
        super().__init__(weight)
        if type not in DIP_TYPES:
            raise ConfigError(f"dipvae type must be one of {', '.join(DIP_TYPES)}, got {type!r}")
        if lambda_od < 0 or (lambda_d is not None and lambda_d < 0):
            raise ConfigError(f"dipvae lambda_od and lambda_d must be >= 0, got {lambda_od}, {lambda_d}")
        self.kind, self.lambda_od = type, float(lambda_od)
        self.lambda_d = float(lambda_d) if lambda_d is not None else (
            10.0 * self.lambda_od if type == "i" else self.lambda_od)

    def __call__(self, out, x, y, model, reduction):
        mu, logvar = _posterior(out, "dip")
        if len(mu) < 2:
            raise ConfigError("the DIP-VAE penalty needs batches of at least 2 samples")
        penalty = dip_penalty(dip_covariance(mu, logvar, self.kind), self.lambda_od, self.lambda_d)
        return penalty.expand(len(mu))


class CapacityKL(Term):
    """β-VAE with a controlled capacity (Burgess et al. 2018): γ·|KL − C| in place of β·KL, the
    KL being the batch mean of KL(q(z|x) || N(0, I)) and C rising linearly from 0 to `c_max`
    (nats, with reduction sum) over `anneal_steps` training steps, then held. `weight` is γ.
    Counts its steps in `update` (once per training batch, after the model's step); the count is
    saved in checkpoints. Parts logged: `gap` |KL − C| (the one weighted), `kl` and `c` (weight 0,
    for the record: the KL tracks C once the reconstruction pays for it)."""

    def __init__(self, weight: float = 1000.0, c_max: float = 25.0, anneal_steps: int = 100000):
        super().__init__(weight)
        if c_max < 0 or anneal_steps < 0:
            raise ConfigError(f"capacity c_max and anneal_steps must be >= 0, got {c_max}, {anneal_steps}")
        self.c_max, self.anneal_steps, self.steps = float(c_max), int(anneal_steps), 0

    def capacity(self, steps: int | None = None) -> float:
        """C after `steps` training steps (default: the steps taken so far)."""
        steps = self.steps if steps is None else steps
        if self.anneal_steps == 0:
            return self.c_max
        return self.c_max * min(1.0, steps / self.anneal_steps)

    def part_weight(self, part: str, epoch) -> float:
        return self.weight_at(epoch) if part == "gap" else 0.0

    def __call__(self, out, x, y, model, reduction) -> dict:
        mu, logvar = _posterior(out, "capacity")
        kl = per_sample(gaussian_kl(mu, logvar), reduction)
        c = self.capacity()
        return {"gap": (kl.mean() - c).abs().expand(len(kl)), "kl": kl, "c": torch.full_like(kl, c)}

    def update(self, out, x, y, model) -> dict:
        self.steps += 1
        return {}

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
