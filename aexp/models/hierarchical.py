"""A VAE with two stochastic layers, the architecture of the 2-layer rows of Burda et al. (2015,
"Importance Weighted Autoencoders", Table 1): x -> 200 -> 200 -> z1 (100) -> 100 -> 100 -> z2 (50)
for the recognition model, z2 -> 100 -> 100 -> z1 -> 200 -> 200 -> x for the generative one,
tanh deterministic layers, diagonal Gaussian q(z1|x), q(z2|z1) and p(z1|z2), p(z2) = N(0, I),
and the decoder's likelihood (Bernoulli by default) on p(x|z1).

The prior of z1 is p(z1|z2), not N(0, I), so the analytic KL of a one-layer VAE does not apply.
The model states its own objective through the hooks of the model contract (aexp.models.base):
- `forward` puts in `extras["kl"]` the per-unit terms of log q(z1, z2|x) - log p(z1, z2) at the
  drawn codes ([B, latent1 + latent2]: their sum is the one-sample KL estimate), which
  `aexp.losses.GaussianKL` uses in place of the analytic KL;
- `importance_log_weights` gives log p(x, z1, z2) - log q(z1, z2|x) for k joint samples, which
  the IWAE term and the NLL of `aexp eval` (report/likelihood.py) use;
- `prior_codes` draws z1 by ancestral sampling (z2 ~ N(0, I), z1 ~ p(z1|z2)) for samples.
`encode` is z1's posterior mean: the code every picture, frame and sampler sees."""
import math

import torch
from torch import nn

from aexp.models.base import Autoencoder, Output
from aexp.models.base import activation as make_act


def gaussian_log_density(z, mu, logvar):
    """log N(z; mu, exp(logvar)) per element (models sit below losses: the losses' own copy,
    aexp.losses.variational, cannot be imported here)."""
    return -0.5 * (((z - mu) ** 2) / logvar.exp() + logvar + math.log(2 * math.pi))


def _mlp(sizes, act) -> nn.Sequential:
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), make_act(act)]
    return nn.Sequential(*layers)


class GaussianLayer(nn.Module):
    """Deterministic layers, then two linear heads: the mean and log-variance of a diagonal
    Gaussian over `out` units."""

    def __init__(self, n_in: int, hidden, out: int, act: str):
        super().__init__()
        self.body = _mlp([n_in, *hidden], act)
        width = ([n_in, *hidden])[-1]
        self.mu, self.logvar = nn.Linear(width, out), nn.Linear(width, out)

    def forward(self, h):
        h = self.body(h)
        return self.mu(h), self.logvar(h)


def draw(mu, logvar, generator=None):
    eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
    return mu + eps * torch.exp(0.5 * logvar)


class HierarchicalVAE(Autoencoder):
    """Two stochastic layers (see the module's docstring). `hidden1`: the widths between x and
    z1 (the decoder p(x|z1) has them reversed); `hidden2`: between z1 and z2 (p(z1|z2) reversed)."""
    prior_name = "the model's own, p(z2) = N(0, I) then p(z1 | z2)"   # eval.json's vae.prior
    decoder_parts = ("decoder",)   # what decode() runs (aexp.models.base)

    def __init__(self, in_shape, out_shape, hidden1=(200, 200), latent1: int = 100,
                 hidden2=(100, 100), latent2: int = 50, activation: str = "tanh",
                 output_activation: str = "sigmoid"):
        super().__init__()
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        n_in, n_out = math.prod(self.in_shape), math.prod(self.out_shape)
        hidden1, hidden2 = list(hidden1), list(hidden2)
        self.latent_dim, self.latent2 = int(latent1), int(latent2)
        self.flatten = nn.Flatten()
        self.q1 = GaussianLayer(n_in, hidden1, self.latent_dim, activation)         # q(z1 | x)
        self.q2 = GaussianLayer(self.latent_dim, hidden2, self.latent2, activation)  # q(z2 | z1)
        self.p1 = GaussianLayer(self.latent2, hidden2[::-1], self.latent_dim, activation)  # p(z1 | z2)
        self.decoder = nn.Sequential(                                                 # p(x | z1)
            *_mlp([self.latent_dim, *hidden1[::-1]], activation),
            nn.Linear(([self.latent_dim, *hidden1[::-1]])[-1], n_out), make_act(output_activation))

    def encode(self, x):
        return self.q1(self.flatten(x))[0]

    def decode(self, z):
        return self.decoder(z).view(-1, *self.out_shape)

    def kl_terms(self, z1, mu1, lv1, sample: bool, generator=None):
        """Per-unit terms of log q(z1, z2|x) - log p(z1, z2) at z1 and a z2 from q(z2|z1)
        (drawn when `sample`, else its mean), shape [..., latent1 + latent2]."""
        mu2, lv2 = self.q2(z1)
        mu2, lv2 = mu2.float(), lv2.float()
        z2 = draw(mu2, lv2, generator) if sample else mu2
        pm1, plv1 = self.p1(z2)
        zero = torch.zeros_like(z2)
        return torch.cat([gaussian_log_density(z1, mu1, lv1) - gaussian_log_density(z1, pm1, plv1),
                          gaussian_log_density(z2, mu2, lv2) - gaussian_log_density(z2, zero, zero)], -1)

    def forward(self, x):
        mu1, lv1 = self.q1(self.flatten(x))
        z1 = draw(mu1, lv1) if self.training else mu1
        # evaluation takes both means (a deterministic validation loss, as z1 = mu1 there)
        kl = self.kl_terms(z1, mu1.float(), lv1.float(), sample=self.training)
        return Output(self.decode(z1), z1, {"mu": mu1, "logvar": lv1, "kl": kl})

    def importance_log_weights(self, extras, x, log_px, k: int, chunk: int = 100, generator=None):
        """log w = log p(x|z1) + log p(z1|z2) + log p(z2) - log q(z1|x) - log q(z2|z1) for k
        joint draws (z1 ~ q(z1|x) given by extras' mu/logvar, z2 ~ q(z2|z1)), shape [N, k];
        `log_px(x, z1)` is the decoder's log-likelihood per sample. `chunk` draws at a time."""
        mu1, lv1 = extras["mu"].float(), extras["logvar"].float()
        out = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            z1 = draw(mu1.expand(m, *mu1.shape), lv1.expand(m, *lv1.shape), generator)   # [m, N, D1]
            xs = x.unsqueeze(0).expand(m, *x.shape).reshape(-1, *x.shape[1:])
            log_ratio = self.kl_terms(z1, mu1, lv1, True, generator).sum(-1)                      # [m, N]
            lw = log_px(xs, z1.reshape(-1, mu1.shape[-1])).view(m, -1) - log_ratio
            out.append(lw.T)
        return torch.cat(out, 1)

    def prior_codes(self, n: int, generator=None) -> torch.Tensor:
        """`n` codes z1 drawn from the generative model: z2 ~ N(0, I), then z1 ~ p(z1|z2) (CPU
        draws from `generator`, so samples do not depend on the device)."""
        device = next(self.parameters()).device
        z2 = torch.randn(n, self.latent2, generator=generator)
        with torch.no_grad():
            mu, lv = (t.cpu() for t in self.p1(z2.to(device)))
        return mu + torch.randn(mu.shape, generator=generator) * torch.exp(0.5 * lv)
