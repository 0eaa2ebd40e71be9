"""Terms on the code: Gaussian KL (beta, linear warm-up), L1 sparsity, the contractive penalty,
and triplet margins on latents (colour nudges, or class labels)."""
import torch
import torch.nn.functional as F

from aexp.errors import ConfigError
from aexp.losses.core import Term, per_sample


def gaussian_kl(mu, logvar):
    """Elementwise KL(N(mu, exp(logvar)) || N(0, 1))."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


class GaussianKL(Term):
    """KL(q(z|x) || N(0, I)) for a diagonal Gaussian posterior; `weight` is beta. A model whose
    prior is not N(0, I) (a hierarchical VAE) puts its own per-unit KL terms in `extras["kl"]`,
    used in its place. With
    `warmup_epochs` = W > 0 the weight rises linearly: beta * epoch / W until epoch W."""

    def __init__(self, weight: float = 1.0, warmup_epochs: int = 0):
        super().__init__(weight)
        if warmup_epochs < 0:
            raise ConfigError(f"kl warmup_epochs must be >= 0, got {warmup_epochs}")
        self.warmup_epochs = warmup_epochs

    def weight_at(self, epoch):
        if epoch is None or self.warmup_epochs == 0:
            return self.weight
        return self.weight * min(1.0, epoch / self.warmup_epochs)

    def __call__(self, out, x, y, model, reduction):
        if "mu" not in out.extras or "logvar" not in out.extras:
            raise ConfigError("loss term 'kl' needs a VAE model (one with mu and log-variance)")
        if "kl" in out.extras:   # a model whose prior is not N(0, I) gives its own (aexp.models.base)
            return per_sample(out.extras["kl"], reduction)
        return per_sample(gaussian_kl(out.extras["mu"], out.extras["logvar"]), reduction)


class Sparsity(Term):
    """L1 norm of the code: pushes most code units to zero (sparse autoencoder)."""

    def __call__(self, out, x, y, model, reduction):
        return per_sample(out.z.abs(), reduction)


class Contractive(Term):
    """Squared Frobenius norm of the encoder's Jacobian dz/dx, per sample (contractive AE).

    Computed with autograd and `create_graph=True`, so the penalty itself has a gradient with
    respect to the weights: a penalty on a detached Jacobian would train nothing. One backward
    pass per code unit, so codes wider than `max_latent` are refused."""

    def __init__(self, weight: float = 1.0, max_latent: int = 32):
        super().__init__(weight)
        self.max_latent = max_latent

    def __call__(self, out, x, y, model, reduction):
        with torch.enable_grad():       # also under no_grad (validation): the value is the same
            xg = x.detach().requires_grad_(True)
            z = model.encode(xg).flatten(1)
            if z.shape[1] > self.max_latent:
                raise ConfigError(f"contractive penalty: a {z.shape[1]}-d code needs {z.shape[1]} "
                                  f"backward passes per step; use a code of at most "
                                  f"{self.max_latent} (model.latent_dim) or raise max_latent")
            sq = torch.zeros(len(x), device=x.device)
            for k in range(z.shape[1]):
                # Samples are independent (given eval-mode BatchNorm), so the gradient of the
                # batch sum of z_k gives every sample's row of its own Jacobian.
                (g,) = torch.autograd.grad(z[:, k].sum(), xg, create_graph=True)
                sq = sq + g.flatten(1).pow(2).sum(1)
        if reduction == "mean":
            sq = sq / (z.shape[1] * xg[0].numel())
        return sq


def triplet_margin(za, zp, zn, margin):
    """max(0, |za - zp| - |za - zn| + margin) per sample (Euclidean distances)."""
    return F.relu((za - zp).norm(dim=1) - (za - zn).norm(dim=1) + margin)


class ColorTriplet(Term):
    """Triplet margin on latents for colour data: the positive is a small nudge of the anchor
    colour (Gaussian, std `nudge`), the negative a random colour farther than `min_distance`
    from it (the farthest of `candidates` draws when none is). Value is per sample; the
    reduction does not apply (one distance per sample)."""

    def __init__(self, weight: float = 1.0, margin: float = 0.1, nudge: float = 0.02,
                 min_distance: float = 0.3, candidates: int = 8):
        super().__init__(weight)
        self.margin, self.nudge, self.min_distance, self.candidates = margin, nudge, min_distance, candidates

    def __call__(self, out, x, y, model, reduction):
        if x.dim() != 2:
            raise ConfigError("loss term 'colour triplet' needs colour vectors (dataset=colors); "
                              "use the label triplet for images")
        pos = (x + self.nudge * torch.randn_like(x)).clamp(0, 1)
        cand = torch.rand(len(x), self.candidates, x.shape[1], device=x.device)
        dist = (cand - x[:, None]).norm(dim=2)
        far = dist > self.min_distance
        # first candidate that is far enough, else the farthest one
        pick = torch.where(far.any(1), far.float().argmax(1), dist.argmax(1))
        neg = cand[torch.arange(len(x), device=x.device), pick]
        return triplet_margin(out.z.flatten(1), model.encode(pos).flatten(1),
                              model.encode(neg).flatten(1), self.margin)


class LabelTriplet(Term):
    """Triplet margin on latents for labelled data, mined in the batch: for every anchor the
    farthest sample of its class is the positive and the nearest sample of another class the
    negative ("batch-hard"). Anchors without both are skipped (value 0)."""
    uses_labels = True

    def __init__(self, weight: float = 1.0, margin: float = 1.0):
        super().__init__(weight)
        self.margin = margin

    def __call__(self, out, x, y, model, reduction, labels=None):
        if labels is None:
            raise ConfigError("loss term 'label triplet' needs a dataset with class labels")
        z = out.z.flatten(1)
        d = torch.cdist(z, z)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
        pos_d = d.masked_fill(~same | eye, float("-inf")).max(1).values
        neg_d = d.masked_fill(same, float("inf")).min(1).values
        ok = torch.isfinite(pos_d) & torch.isfinite(neg_d)
        loss = F.relu(pos_d - neg_d + self.margin)
        return torch.where(ok, loss, torch.zeros_like(loss))


class VectorQuantization(Term):
    """VQ-VAE's code terms, as parts: `commit`, ||e - sg(q)||² weighted by `commitment` (β), which
    keeps the encoder near its codes; `codebook`, ||sg(e) - q||², only when the codebook is learned
    by gradient (an EMA codebook moves by itself); and, logged with weight 0, the batch's codebook
    `perplexity` (exp of the code distribution's entropy: the number of equally used codes it
    equals) and the number of codes `used` in the batch. On an FSQ model only the last two
    (loss=fsq, commitment 0): FSQ learns nothing but the encoder and decoder."""

    def __init__(self, weight: float = 1.0, commitment: float = 0.25):
        super().__init__(weight)
        self.commitment = commitment

    def part_weight(self, part, epoch):
        return {"commit": self.weight * self.commitment, "codebook": self.weight}.get(part, 0.0)

    def __call__(self, out, x, y, model, reduction):
        if out.extras.get("vq_fsq"):
            return self._fsq(out)
        if "vq_e" not in out.extras:
            raise ConfigError("loss term 'vq' needs a VQ model (model=vqvae, or model.codebook set)")
        e, q = out.extras["vq_e"], out.extras["vq_q"]
        parts = {"commit": per_sample((e - q.detach()) ** 2, reduction)}
        if not out.extras["vq_ema"]:
            parts["codebook"] = per_sample((e.detach() - q) ** 2, reduction)
        parts["perplexity"] = out.extras["vq_perplexity"].float().expand(len(e))   # the quantiser's
        parts["used"] = out.extras["vq_used"].float().expand(len(e))
        return parts

    def _fsq(self, out):
        """An FSQ quantiser (aexp.models.fsq) has no codebook to commit to: a commitment weight
        would be a term that does nothing, so it is refused; the usage parts are logged."""
        if self.commitment:
            raise ConfigError("an FSQ model (model.quantizer) has no codebook: its loss has no "
                              "commitment term; use loss=fsq (or set loss.terms.vq.commitment=0)")
        n = len(out.extras["codes"])
        return {"perplexity": out.extras["vq_perplexity"].float().expand(n),
                "used": out.extras["vq_used"].float().expand(n)}
