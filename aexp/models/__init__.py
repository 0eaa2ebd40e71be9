"""Autoencoder models. Every model exposes `encode(x) -> z`, `decode(z) -> x_hat` and
`forward(x) -> Output(x_hat, z, extras)`; it is built from config with the data's shapes
(`in_shape`, `out_shape`) passed in at build time."""
from typing import NamedTuple

import torch
from torch import nn

from aexp.errors import ConfigError


class Output(NamedTuple):
    x_hat: torch.Tensor
    z: torch.Tensor
    extras: dict


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
