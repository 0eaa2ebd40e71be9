"""Losses as a weighted sum of named terms. Each term returns one value per sample; `Loss`
averages over the batch, weights and sums them, and returns every term so each is logged.

Reduction (documented, explicit):
- `sum`  (default): per sample, sum over all pixels / latent dimensions, then mean over the batch.
  This is the scale of the VAE objective (nats per image) and of the classic Keras/PyTorch examples.
- `mean`: per sample, mean over pixels / latent dimensions, then mean over the batch
  (`nn.MSELoss()`'s scale for reconstruction terms).
"""
import torch
import torch.nn.functional as F

from aexp.errors import ConfigError

REDUCTIONS = ("sum", "mean")


def per_sample(t: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce all but the batch dimension."""
    t = t.flatten(1)
    return t.sum(1) if reduction == "sum" else t.mean(1)


class Term:
    """A loss term: `weight * value`, where value is per sample, shape [B]."""

    def __init__(self, weight: float = 1.0):
        self.weight = float(weight)

    def __call__(self, out, x, y, model, reduction: str) -> torch.Tensor:
        raise NotImplementedError


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
        return per_sample(F.binary_cross_entropy(out.x_hat.clamp(0, 1), y, reduction="none"),
                          reduction)


class GaussianKL(Term):
    """KL(q(z|x) || N(0, I)) for a diagonal Gaussian posterior; `weight` is beta."""

    def __call__(self, out, x, y, model, reduction):
        if "mu" not in out.extras or "logvar" not in out.extras:
            raise ConfigError("loss term 'kl' needs a VAE model (one with mu and log-variance)")
        mu, logvar = out.extras["mu"], out.extras["logvar"]
        return per_sample(-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()), reduction)


class Loss:
    """Weighted sum of named terms. `terms` maps a name to a `Term` (built from config)."""

    def __init__(self, terms: dict, reduction: str = "sum"):
        if reduction not in REDUCTIONS:
            raise ConfigError(f"loss.reduction must be one of {REDUCTIONS}, got '{reduction}'")
        if not terms:
            raise ConfigError("loss.terms is empty; give at least one term")
        self.terms = dict(terms)
        self.reduction = reduction

    def __call__(self, out, x, y, model) -> dict:
        """Return {'loss': weighted total, name: unweighted batch-mean value of each term}."""
        values = {name: term(out, x, y, model, self.reduction).mean()
                  for name, term in self.terms.items()}
        values["loss"] = sum(self.terms[n].weight * v for n, v in values.items())
        return values
