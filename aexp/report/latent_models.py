"""The two samplers that are small networks trained on the codes (the contract: report/samplers.py):
- `TwoStage`: a second VAE on the codes (Dai & Wipf 2019, "Diagnosing and enhancing VAE
  models"): the first model's codes rarely follow its prior (or any simple law); a second VAE
  with a Gaussian decoder and a learned noise scale γ learns to map N(0, I) onto them. Samples:
  u ~ N(0, I) -> its decoder's mean. Its `log_prob` is the ELBO (a lower bound).
- `MAF`: a masked autoregressive flow (Papamakarios et al. 2017): `layers` MADE networks
  (Germain et al. 2015), each a shift and log-scale of every dimension given the ones before,
  the order reversed between layers; an exact log-likelihood, sampled one dimension at a time.
Both standardise the codes first (per-dimension mean and std, kept in the state) and train with
Adam on CPU-sized budgets (`steps` minibatches of `batch`), seeded."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from aexp.errors import ConfigError
from aexp.report.samplers import Sampler, _shape, _tensors


class Standardised(Sampler):
    """What both share: settings, the standardisation, the seeded Adam loop, the state."""
    net: nn.Module

    def __init__(self, steps: int, lr: float, batch: int, seed: int, **more):
        self.settings = {"steps": int(steps), "lr": float(lr), "batch": int(batch),
                         "seed": int(seed), **more}
        self.mean = self.std = self.net = None
        self.dim = None

    def build(self, dim: int) -> nn.Module:
        raise NotImplementedError

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood (or negative ELBO) of standardised codes."""
        raise NotImplementedError

    def log_prob_standard(self, x: torch.Tensor) -> torch.Tensor:
        """log p (or the ELBO) of each standardised code."""
        raise NotImplementedError

    def fit(self, codes):
        x = codes.float()
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-6) if len(x) > 1 else torch.ones(x.shape[1])
        x = (x - self.mean) / self.std
        threads = torch.get_num_threads()
        torch.set_num_threads(1)   # a net this small: more threads only wait on each other
        try:
            self._train(x)
        finally:
            torch.set_num_threads(threads)
        self.net.eval()
        return self

    def _train(self, x: torch.Tensor) -> None:
        s = self.settings
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):   # (callers may be in no_grad)
            torch.manual_seed(s["seed"])
            self.dim, self.net = x.shape[1], self.build(x.shape[1])
            opt = torch.optim.Adam(self.net.parameters(), lr=s["lr"])
            gen = torch.Generator().manual_seed(s["seed"])
            self.net.train()
            for _ in range(s["steps"]):
                idx = torch.randint(0, len(x), (min(s["batch"], len(x)),), generator=gen)
                loss = self.loss(x[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    def log_prob(self, codes):
        with torch.no_grad():
            x = (codes.float() - self.mean) / self.std
            return self.log_prob_standard(x) - self.std.log().sum()

    def state(self):
        return {"mean": self.mean, "std": self.std, "dim": self.dim, "net": self.net.state_dict()}

    def load_state(self, state):
        self.mean, self.std = _tensors(state, ("mean", "std"), ())
        dim = state.get("dim")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError("dim is not a positive integer")
        _shape(self.mean, (dim,), "mean")
        _shape(self.std, (dim,), "std")
        self.dim, self.net = dim, self.build(dim)
        net = state.get("net")
        if not isinstance(net, dict):
            raise ValueError("net holds no weights")
        self.net.load_state_dict(net)   # a RuntimeError for weights of another size or shape
        self.net.eval()


def mlp(a: int, hidden: int, b: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(a, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, b))


class TwoStage(Standardised):
    """A second VAE on the codes: `latent_dim` (null = the code's own dimension), `hidden`
    units in each of two layers of its encoder and decoder."""

    def __init__(self, latent_dim: int | None = None, hidden: int = 64, steps: int = 1000,
                 lr: float = 1e-3, batch: int = 256, seed: int = 0):
        extra = {"hidden": int(hidden)}
        if latent_dim is not None:
            extra["latent_dim"] = int(latent_dim)
        super().__init__(steps, lr, batch, seed, **extra)

    def build(self, dim):
        latent = self.settings.get("latent_dim") or dim
        net = nn.ModuleDict({"enc": mlp(dim, self.settings["hidden"], 2 * latent),
                             "dec": mlp(latent, self.settings["hidden"], dim)})
        # the decoder's learned noise scale γ, started at e^-1 of the codes' std: from γ = 1 the
        # second VAE first collapses onto the mean (γ = 1 explains standardised codes alone)
        # and takes hundreds of steps more to leave it
        net.log_gamma = nn.Parameter(torch.full((), -1.0))
        return net

    def elbo(self, x: torch.Tensor, sample: bool = True) -> torch.Tensor:
        mu, logvar = self.net["enc"](x).chunk(2, dim=1)
        logvar = logvar.clamp(-12, 8)
        u = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        gamma = self.net.log_gamma.exp()
        rec = -0.5 * (((x - self.net["dec"](u)) / gamma) ** 2 + 2 * self.net.log_gamma
                      + math.log(2 * math.pi)).sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return rec - kl

    def loss(self, x):
        return -self.elbo(x).mean()

    def log_prob_standard(self, x):
        with torch.random.fork_rng(devices=[]):   # one seeded draw: the same ELBO every call
            torch.manual_seed(self.settings["seed"])
            return self.elbo(x)

    @torch.no_grad()
    def sample(self, n, gen):
        latent = self.settings.get("latent_dim") or self.dim
        u = torch.randn(n, latent, generator=gen)
        return self.net["dec"](u) * self.std + self.mean


class MADE(nn.Module):
    """Masked dense network: output i (a shift and a log-scale) sees inputs 0..i-1 only."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.l1, self.l2, self.out = nn.Linear(dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 2 * dim)
        degree_in = torch.arange(1, dim + 1)
        degree_h = torch.arange(hidden) % max(1, dim - 1) + 1   # each hidden unit sees inputs < its degree + 1
        self.register_buffer("m1", (degree_h[:, None] >= degree_in[None]).float())
        self.register_buffer("m2", (degree_h[:, None] >= degree_h[None]).float())
        self.register_buffer("m3", (degree_in[:, None] > degree_h[None]).float().repeat(2, 1))

    def forward(self, x):
        h = F.relu(F.linear(x, self.l1.weight * self.m1, self.l1.bias))
        h = F.relu(F.linear(h, self.l2.weight * self.m2, self.l2.bias))
        shift, raw = F.linear(h, self.out.weight * self.m3, self.out.bias).chunk(2, dim=1)
        return shift, 3 * torch.tanh(raw / 3)   # a bounded log-scale keeps training stable


class MAF(Standardised):
    """`layers` MADE layers of `hidden` units, the dimension order reversed between layers."""

    def __init__(self, layers: int = 4, hidden: int = 64, steps: int = 600, lr: float = 1e-3,
                 batch: int = 256, seed: int = 0, max_dim: int = 256):
        super().__init__(steps, lr, batch, seed, layers=int(layers), hidden=int(hidden),
                         max_dim=int(max_dim))

    def fit(self, codes):
        if codes.shape[1] > self.settings["max_dim"]:   # sampling costs layers x dim passes
            raise ConfigError(f"the flow sampler draws one code value at a time: a {codes.shape[1]}-value "
                              f"code is too wide (max_dim={self.settings['max_dim']}); give the model a "
                              "dense bottleneck (model.latent_dim) or use gmm or two_stage")
        return super().fit(codes)

    def build(self, dim):
        return nn.ModuleList([MADE(dim, self.settings["hidden"]) for _ in range(self.settings["layers"])])

    def log_prob_standard(self, x):
        logdet = torch.zeros(len(x))
        for i, made in enumerate(self.net):
            if i:
                x = x.flip(1)
            shift, log_scale = made(x)
            x = (x - shift) * torch.exp(-log_scale)
            logdet = logdet - log_scale.sum(1)
        base = -0.5 * x.pow(2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)
        return base + logdet

    def loss(self, x):
        return -self.log_prob_standard(x).mean()

    @torch.no_grad()
    def sample(self, n, gen):
        x = torch.randn(n, self.dim, generator=gen)
        for i in reversed(range(len(self.net))):
            u, x = x, torch.zeros_like(x)
            for d in range(self.dim):   # dimension d needs every dimension before it
                shift, log_scale = self.net[i](x)
                x[:, d] = u[:, d] * torch.exp(log_scale[:, d]) + shift[:, d]
            if i:
                x = x.flip(1)
        return x * self.std + self.mean
