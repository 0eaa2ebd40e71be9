"""The adversarial patch loss of VQGAN / latent-diffusion autoencoders (Esser et al. 2021): a
small PatchGAN discriminator (Isola et al. 2017) scores each patch of an image as real (a target)
or not (a reconstruction), trained with the hinge loss; the model minimises -D(x_hat), which
pushes its reconstructions towards the targets' local texture, where a pixel loss blurs.

It is a `Critic` (aexp.losses.adversarial): the discriminator has its own optimiser, stepped by
the training loop once per batch after the model's step; its weights, its optimiser, the step
count and the last adaptive weight are in every checkpoint, so a resumed run continues exactly.

- `start_step`: the term is off (value 0, the discriminator not stepped) on the first
  `start_step` training batches, so the model first learns to reconstruct (VQGAN's disc_start).
- Adaptive weight (VQGAN eq. 7): lambda = ||grad_L L_rec|| / (||grad_L L_gan|| + 1e-4), clamped
  to [0, max_weight], at the decoder's last layer L; the model's loss gets `weight * lambda *
  L_gan`. L_rec here is the squared error of the reconstruction, reduced as the loss reduces
  (what loss=mse's term is). The layer comes from the model's `last_layer` attribute, a module
  with a `weight` (aexp's resconv and conv models have one); a model without it, or
  `adaptive: false`, gets lambda = 1: a fixed weight. Outside training (validation, evaluation),
  where there is no gradient, the last training batch's lambda is used.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from aexp.errors import ConfigError
from aexp.losses.adversarial import Critic
from aexp.losses.core import per_sample


def patch_discriminator(channels: int, width: int, layers: int) -> nn.Sequential:
    """`layers` stride-2 4x4 convs (width doubling, GroupNorm after the first, leaky ReLU 0.2),
    then a 3x3 conv to one logit per patch (the 70x70 PatchGAN has 3 layers of width 64)."""
    mods, c_in, c = [], channels, width
    for i in range(layers):
        mods += [nn.Conv2d(c_in, c, 4, 2, 1)]
        mods += [nn.GroupNorm(math.gcd(8, c), c)] if i else []
        mods += [nn.LeakyReLU(0.2)]
        c_in, c = c, c * 2
    return nn.Sequential(*mods, nn.Conv2d(c_in, 1, 3, 1, 1))


class PatchGAN(Critic):
    """Hinge patch-GAN term. Its value per sample is -D(x_hat) averaged over patches (`gan` in
    metrics.csv); logged beside it: `disc_loss` (the discriminator's hinge loss, before its step),
    `real` and `fake` (its mean logits on targets and reconstructions) and `adaptive` (lambda)."""

    def __init__(self, weight: float = 0.5, channels: int | None = None, width: int = 64,
                 layers: int = 3, start_step: int = 0, adaptive: bool = True,
                 max_weight: float = 1.0e4, optimizer=None):
        if channels is None or int(channels) < 1:
            raise ConfigError("the patch discriminator needs image data: its `channels` (null takes "
                              "them from the dataset's images when the run is built)")
        if int(width) < 1 or int(layers) < 1 or int(start_step) < 0 or max_weight <= 0:
            raise ConfigError(f"patch discriminator: width and layers must be >= 1, start_step >= 0 "
                              f"and max_weight > 0; got {width}, {layers}, {start_step}, {max_weight}")
        super().__init__(weight, patch_discriminator(int(channels), int(width), int(layers)), optimizer)
        self.channels, self.start_step, self.adaptive = int(channels), int(start_step), bool(adaptive)
        self.max_weight = float(max_weight)
        self.steps = 0                      # training batches seen (updates), in the checkpoint
        self.lam = torch.tensor(1.0)        # the last training batch's adaptive weight

    def on(self) -> bool:
        return self.steps >= self.start_step

    def _image(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 4 or t.shape[1] != self.channels:
            raise ConfigError(f"the patch discriminator takes images of {self.channels} channel(s); "
                              f"the model gives {tuple(t.shape[1:])}")
        return t.float()

    def weight_at(self, epoch):
        return self.weight * self.lam

    def __call__(self, out, x, y, model, reduction):
        x_hat = self._image(out.x_hat)
        if not self.on():                   # exactly nothing: the loss is the base loss
            return torch.zeros(len(x_hat), device=x_hat.device)
        g = -self.held(x_hat).flatten(1).mean(1)
        layer = getattr(model, "last_layer", None)
        if not self.adaptive or not isinstance(getattr(layer, "weight", None), torch.Tensor):
            self.lam = torch.tensor(1.0, device=x_hat.device)
        elif model.training and torch.is_grad_enabled() and x_hat.requires_grad:
            rec = per_sample((x_hat - y.float()) ** 2, reduction).mean()
            g_rec, g_gan = (torch.autograd.grad(v, layer.weight, retain_graph=True, allow_unused=True)[0]
                            for v in (rec, g.mean()))
            if g_rec is not None and g_gan is not None:
                self.lam = (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0, self.max_weight).detach()
        self.lam = self.lam.to(x_hat.device)
        return g

    def critic_loss(self, out, x, y, model):
        real, fake = self.net(self._image(y)), self.net(self._image(out.x_hat).detach())
        loss = 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
        return loss, {"real": real.mean().detach(), "fake": fake.mean().detach(),
                      "adaptive": self.lam.detach().clone()}

    def update(self, out, x, y, model) -> dict:
        if self.on():
            logged = super().update(out, x, y, model)
        else:       # the same columns every batch; the discriminator is not stepped yet
            with torch.no_grad():
                loss, logged = self.critic_loss(out, x, y, model)
            logged = {"disc_loss": loss, **logged, "adaptive": torch.zeros_like(loss)}
        self.steps += 1
        return logged

    def state_dict(self) -> dict:
        return {**super().state_dict(), "steps": self.steps, "lam": self.lam.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.steps, self.lam = int(state["steps"]), state["lam"].clone()

    def to(self, device) -> "PatchGAN":
        self.lam = self.lam.to(device)
        return super().to(device)
