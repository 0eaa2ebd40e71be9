"""Autoencoder models, one module per family (dense, conv, pooling, resnet; shared blocks in
`blocks`). Every model follows the contract of `base.Autoencoder`; config targets name the
classes by module, e.g. `aexp.models.conv.ConvAE`."""
from aexp.models.base import ACTIVATIONS, BOUNDS, Autoencoder, Output, activation, call, encode_with

__all__ = ["ACTIVATIONS", "BOUNDS", "Autoencoder", "Output", "activation", "call", "encode_with"]
