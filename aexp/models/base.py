"""The model contract every autoencoder follows, stated once with its defaults, and the named
activations models are configured with.

A model is built from config with the data's shapes passed in (`in_shape`, `out_shape`) and
offers:
- `encode(x) -> z` and `decode(z) -> x_hat` (required);
- `forward(x) -> Output(x_hat, z, extras)`: by default decode(encode(x)) with no extras; a VAE
  puts `mu` and `logvar` in `extras` (what the KL term and the likelihood evaluation read);
- a VAE whose prior is not N(0, I) around one Gaussian code (a hierarchy: aexp.models.hierarchical)
  states its own objective: `extras["kl"]` (per-unit terms of log q(z|x) - log p(z) at the drawn
  code, used by the KL term in place of the analytic KL), `importance_log_weights(extras, x,
  log_px, k, chunk, generator)` (log p(x, z) - log q(z|x) for k samples, [N, k]: the IWAE term
  and the NLL of `aexp eval`) and `prior_codes(n, generator)` (codes drawn from its prior, for
  samples);
- `latent_range`: (low, high) of a bounded code (a sigmoid or tanh latent), else None; frames
  and pictures then draw the code's own range;
- `start_epoch(epoch)`: told before each training epoch (1-based), and with None when the
  model is used outside a training run (lr-find, after training): None means "as trained";
- `codebook_size` and `code_indices(x)`: for a model with a discrete code (VQ), the number of
  codes and each position's code index; None otherwise (a continuous code);
- `decoder_parts`: the names of the submodules `decode` runs (None: not named), and
  `decoder_parameters()`, their parameters: what RAE-L2's decoder penalty
  (aexp.losses.DecoderL2) weighs; a test checks them against what `decode` touches;
- `weight_product()`: the product of the weight matrices of a dense model (the W2·W1 picture),
  None for models where it means nothing;
- `conditional`: True for a model that also takes class labels (a CVAE, aexp.models.dense):
  it is built with the data's `num_classes` and offers `encode(x, labels=None)`,
  `decode(z, labels=None)`, `forward(x, labels=None)`. Callers with samples, hence labels
  (training, validation, evaluation, the codes frames, explorer and samplers draw) pass them
  through `call` / `encode_with`; callers decoding codes that no sample stands behind (the
  decoded plane of frames and explorer) give none and get class 0; samples standing for the
  dataset (`aexp sample`) are drawn for every class alike (aexp.draw.every_class).
"""
from typing import NamedTuple

import torch
from torch import nn

from aexp.errors import ConfigError


class Output(NamedTuple):
    x_hat: torch.Tensor
    z: torch.Tensor
    extras: dict


class Autoencoder(nn.Module):
    """Base class: subclasses set their layers and implement `encode` and `decode`."""
    latent_range = None
    codebook_size = None
    conditional = False   # True: encode/decode/forward also take class labels (see above)
    decoder_parts = None  # names of the submodules decode() runs, e.g. ("unbottleneck", "decoder")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> Output:
        z = self.encode(x)
        return Output(self.decode(z), z, {})

    def start_epoch(self, epoch: int | None) -> None:
        """Nothing changes between epochs unless a model says so."""

    def decoder_parameters(self) -> list | None:
        """The parameters of the submodules named in `decoder_parts` (absent or None ones
        skipped), or None for a model that does not name them."""
        if self.decoder_parts is None:
            return None
        parts = [getattr(self, name, None) for name in self.decoder_parts]
        return [p for part in parts if part is not None for p in part.parameters()]

    def weight_product(self) -> torch.Tensor | None:
        return None

    def code_indices(self, x: torch.Tensor) -> torch.Tensor | None:
        return None


def call(model, x: torch.Tensor, labels: torch.Tensor | None = None, net=None) -> Output:
    """`model(x)`, with the class labels passed only to a conditional model (others never see
    them). `net`: the model as wrapped for training (DDP, torch.compile), called in its place."""
    net = model if net is None else net
    return net(x, labels) if model.conditional else net(x)


def encode_with(model, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """`model.encode(x)`, with the class labels passed only to a conditional model (as `call`)."""
    return model.encode(x, labels) if model.conditional else model.encode(x)


# Named activations usable in config ("none" is the identity).
ACTIVATIONS = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "hardtanh": lambda: nn.Hardtanh(0.0, 1.0),
    "none": nn.Identity,
}

# Value ranges of bounded activations: lets frames use fixed axes for a bounded latent.
BOUNDS = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "hardtanh": (0.0, 1.0)}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown activation '{name}'; choose from {', '.join(ACTIVATIONS)}"
        ) from None
