"""The VampPrior (Tomczak & Welling 2018): the VAE's prior is a mixture of the encoder's own
posteriors at K learned pseudo-inputs u_k, p(z) = 1/K sum_k q(z | u_k), in place of N(0, I).

`VampKL` is the KL term of that VAE, estimated with one sample per input (the paper's): the value
per sample is log q(z|x) - log p(z) at the posterior's draw z (at evaluation, where the model
gives its mean, at z = mu). The pseudo-inputs are this term's parameters: they get their
gradients from the model's own backward pass (through the encoder) and are stepped by the
term's own optimiser right after the model's step (`update`); they and that optimiser's state
are in every checkpoint. `aexp sample RUN --sampler vamp` draws from the mixture (report/sample.py
reads `prior_components`).

They take the shape of the first batch the term sees (the data's input shape) and start
uniform in [0, 1] from a generator of their own (`seed`), so building the loss draws nothing
from the run's random stream. The encoder is applied to them in eval mode (BatchNorm uses its
running statistics and is not updated by pseudo-inputs)."""
import math

import torch

from aexp.errors import ConfigError
from aexp.losses.core import Term
from aexp.losses.variational import gaussian_log_prob


class VampKL(Term):
    def __init__(self, weight: float = 1.0, components: int = 50, seed: int = 0, optimizer=None):
        super().__init__(weight)
        if int(components) < 1:
            raise ConfigError(f"VampPrior components must be >= 1, got {components}")
        if not callable(optimizer):
            raise ConfigError("the VampPrior's pseudo-inputs need their own optimizer (a `_target_` "
                              "such as torch.optim.Adam under the term's `optimizer:`)")
        self.components, self.seed, self.make_optimizer = int(components), int(seed), optimizer
        self.pseudo, self.optimizer, self.device = None, None, None

    def _init(self, shape, device) -> None:
        g = torch.Generator().manual_seed(self.seed)
        self.pseudo = torch.rand(self.components, *shape, generator=g).to(device).requires_grad_(True)
        self.optimizer = self.make_optimizer([self.pseudo])

    def prior_components(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu [K, D], logvar [K, D]) of the mixture: the encoder's posteriors at the pseudo-inputs."""
        if self.pseudo is None:
            raise ConfigError("the VampPrior has no pseudo-inputs yet (a run that never trained)")
        was = model.training
        model.eval()
        try:
            extras = model(self.pseudo).extras
        finally:
            model.train(was)
        if "mu" not in extras or "logvar" not in extras:
            raise ConfigError("loss term VampKL needs a VAE model (one with mu and log-variance)")
        return extras["mu"].flatten(1).float(), extras["logvar"].flatten(1).float()

    def log_prior(self, z: torch.Tensor, model) -> torch.Tensor:
        """log p(z) = logsumexp_k log q(z | u_k) - log K, per code (z [..., D])."""
        p_mu, p_logvar = self.prior_components(model)
        lp = gaussian_log_prob(z.float().unsqueeze(-2), p_mu, p_logvar)      # [..., K]
        return torch.logsumexp(lp, -1) - math.log(self.components)

    def bind_prior(self, model) -> None:
        """Give a loaded run's model this prior as `model.log_prior(z)` (what the importance-
        sampled NLL of `aexp eval`, report/likelihood.py, uses instead of N(0, I))."""
        if self.pseudo is not None:
            prior = lambda z: self.log_prior(z, model)
            prior.name = f"the VampPrior ({self.components} pseudo-inputs)"
            object.__setattr__(model, "log_prior", prior)

    def __call__(self, out, x, y, model, reduction):
        if "mu" not in out.extras or "logvar" not in out.extras:
            raise ConfigError("loss term VampKL needs a VAE model (one with mu and log-variance)")
        if self.pseudo is None:
            self._init(x.shape[1:], x.device)
        mu, logvar = out.extras["mu"].flatten(1).float(), out.extras["logvar"].flatten(1).float()
        z = out.z.flatten(1).float()
        kl = gaussian_log_prob(z, mu, logvar) - self.log_prior(z, model)
        return kl if reduction == "sum" else kl / z.shape[1]

    def update(self, out, x, y, model) -> dict:
        # the model's backward left the pseudo-inputs' gradients: step them, then clear them
        if self.pseudo.grad is not None:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {}

    def state_dict(self) -> dict:
        # never empty, so a resumed run restores it even before the term has seen a batch
        if self.pseudo is None:
            return {"pseudo": None}
        return {"pseudo": self.pseudo.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("pseudo") is None:
            return
        device = self.device or state["pseudo"].device
        self.pseudo = state["pseudo"].detach().clone().to(device).requires_grad_(True)
        self.optimizer = self.make_optimizer([self.pseudo])
        self.optimizer.load_state_dict(state["optimizer"])

    def to(self, device) -> "VampKL":
        self.device = device
        if self.pseudo is not None:
            self.pseudo.data = self.pseudo.data.to(device)
        return self
