"""Terms that train something of their own beside the model: a network with its own optimiser,
stepped by the same training loop once per batch, after the model's step (`Loss.auxiliary_step`
calls `update`). `Critic` is that mechanism, for any adversarial term (a patch-GAN critic on the
reconstructions would subclass it the same way); `FactorTC` is FactorVAE's total-correlation
term (Kim & Mnih 2018), whose critic is a discriminator on codes vs dimension-wise permuted codes.

The critic's parameters are not the model's: the model's optimiser never sees them, the critic's
own optimiser (its config names a `_target_` such as torch.optim.Adam; aexp.assemble.build_loss
hands it over unbuilt, as a function of the parameters) steps only them, and its weights and
optimiser state go into the checkpoint, so a killed run resumes exactly."""
import torch
import torch.nn.functional as F
from torch import nn

from aexp.errors import ConfigError
from aexp.losses.core import Term


class Critic(Term):
    """A loss term with a network `net` trained by its own optimiser. Subclasses give the value
    the model's loss sees (`__call__`, per sample) and the critic's own objective
    (`critic_loss`); `update` takes one optimiser step on the latter and returns what to log
    (`disc_loss` and whatever `critic_loss` adds). `optimizer`: a function params -> optimiser."""

    def __init__(self, weight: float, net: nn.Module, optimizer):
        super().__init__(weight)
        if not callable(optimizer):
            raise ConfigError(f"{type(self).__name__} needs its own optimizer (a `_target_` such as "
                              f"torch.optim.Adam under the term's `optimizer:`)")
        self.net = net
        self.optimizer = optimizer(self.net.parameters())

    def critic_loss(self, out, x, y, model) -> tuple[torch.Tensor, dict]:
        """(the critic's scalar loss on this batch, {name: value to log})."""
        raise NotImplementedError

    def held(self, *inputs) -> torch.Tensor:
        """The critic's output with its weights held fixed, for the model's loss: gradients
        reach the inputs (and so the model) but are not computed for the critic's weights,
        which only its own optimiser steps."""
        fixed = {n: p.detach() for n, p in self.net.named_parameters()}
        return torch.func.functional_call(self.net, fixed, inputs)

    def update(self, out, x, y, model) -> dict:
        # In fp32 whatever the model's precision: the critic's step is outside its autocast.
        loss, logged = self.critic_loss(out, x, y, model)
        # set_to_none also drops anything the model's backward left on the critic's weights (a
        # subclass scoring with `self.net` rather than `held`): those gradients are not its own
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.net)
        self.optimizer.step()
        return {"disc_loss": loss.detach(), **logged}

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])

    def to(self, device) -> "Critic":
        # Parameters move in place (the optimiser keeps its references); call before any step
        # or resume, so the optimiser state is created (or loaded) on the same device.
        self.net.to(device)
        return self


def average_gradients(net: nn.Module) -> None:
    """Under torchrun every process trains its own copy of the critic on its shard: average the
    gradients so the copies stay equal (DDP does this for the model only)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    for p in net.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world


def permute_dims(z: torch.Tensor) -> torch.Tensor:
    """Each code dimension shuffled independently across the batch: samples of the product of
    the marginals Π_j q(z_j) (Kim & Mnih 2018, Algorithm 1). Draws from the global torch RNG
    (saved in checkpoints)."""
    order = torch.rand(z.shape, device=z.device).argsort(0)
    return z.gather(0, order)


def mlp(n_in: int, hidden, negative_slope: float) -> nn.Sequential:
    """n_in -> hidden... -> 1 logit, leaky ReLUs between (the paper's discriminator: five hidden
    layers of 1000 units, slope 0.2)."""
    layers, width = [], n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(negative_slope)]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 1))


class FactorTC(Critic):
    """FactorVAE's total correlation, TC(z) = KL(q(z) || Π_j q(z_j)), weight γ (Kim & Mnih 2018).
    A discriminator D tells codes z ~ q(z) (label 1) from dimension-wise permuted codes (label 0);
    its logit log D(z)/(1 - D(z)) estimates log q(z) / Π q(z_j), so the value per sample is the
    logit on that sample's code, whose batch mean (`tc`) estimates TC. The model minimises it
    through z, the discriminator held fixed (`held`): only its own optimiser steps it. The
    discriminator trains on this batch's codes, detached, against their own permutation (the
    paper permutes a second batch; one batch halves the encoder passes).
    Logged: `disc_loss` (its binary cross-entropy) and `disc_acc` (its accuracy on the batch,
    real and permuted halves weighted equally; 0.5 is chance, before its step)."""

    def __init__(self, weight: float = 10.0, hidden=(128, 128), negative_slope: float = 0.2,
                 code_size: int | None = None, optimizer=None):
        if code_size is None or int(code_size) < 1:
            raise ConfigError("FactorVAE's discriminator needs the code size (code_size: null "
                              "takes it from the model when the run is built)")
        if any(int(h) < 1 for h in hidden):
            raise ConfigError(f"discriminator hidden widths must be >= 1, got {list(hidden)}")
        super().__init__(weight, mlp(int(code_size), [int(h) for h in hidden], negative_slope),
                         optimizer)
        self.code_size = int(code_size)

    def _code(self, out) -> torch.Tensor:
        z = out.z.flatten(1)
        if z.shape[1] != self.code_size:
            raise ConfigError(f"FactorVAE's discriminator takes {self.code_size}-d codes, the "
                              f"model gives {z.shape[1]}-d ones")
        return z

    def __call__(self, out, x, y, model, reduction):
        return self.held(self._code(out)).squeeze(1).float()

    def critic_loss(self, out, x, y, model):
        z = self._code(out).detach().float()
        real, permuted = self.net(z).squeeze(1), self.net(permute_dims(z)).squeeze(1)
        loss = 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                      + F.binary_cross_entropy_with_logits(permuted, torch.zeros_like(permuted)))
        acc = 0.5 * ((real > 0).float().mean() + (permuted < 0).float().mean())
        return loss, {"disc_acc": acc.detach()}
