"""Residual conv autoencoder in the shape of today's latent-diffusion autoencoders, small
(Rombach et al. 2022, the VQGAN/KL-f8 encoder and decoder; no attention block here).

Encoder: a 3x3 stem, then per entry of `channels` `blocks` residual blocks (GroupNorm -> SiLU ->
3x3 conv, twice, plus a skip) and a stride-2 3x3 conv that halves the sides (rounding up), a
middle residual block, and GroupNorm -> SiLU -> 3x3 conv to `latent_channels` feature maps.
Decoder: the mirror, upsampling by nearest-neighbour resize to the encoder's recorded size + 3x3
conv (no transposed convs: their uneven overlap leaves a grid texture), and GroupNorm -> SiLU ->
3x3 conv to the output's channels. GroupNorm, not BatchNorm: a sample's output does not depend
on the rest of its batch (which matters for a GAN critic's batches and for batch size 1).

The code: without `latent_dim`, the last feature map flattened (variational: a Gaussian per
position, the latent-diffusion VAE's); with `latent_dim`, a dense bottleneck (variational: the
GaussianHead of the conv VAE). `last_layer` is the decoder's final conv, the layer an adaptive
adversarial weight (aexp.losses.patchgan) measures gradients at.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from aexp.errors import ConfigError
from aexp.models.base import Autoencoder, Output
from aexp.models.base import activation as make_act
from aexp.models.blocks import GaussianHead, check_sizes, halvings


def norm(c: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with at most `groups` groups that divide `c` (narrow layers get fewer)."""
    return nn.GroupNorm(math.gcd(groups, c), c)


class ResBlock(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x)))))), with a 1x1 conv on the skip when widths differ."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(norm(c_in, groups), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, 1, 1),
                                  norm(c_out, groups), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, 1, 1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        return self.skip(x) + self.body(x)


class Up(nn.Module):
    """Nearest-neighbour resize to the target size, then a 3x3 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x, size):
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


def stage(c_in: int, c_out: int, blocks: int, groups: int) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(c_in if i == 0 else c_out, c_out, groups) for i in range(blocks)])


class ResConvAE(Autoencoder):
    decoder_parts = ("unbottleneck", "dec_in", "dec_stages", "ups", "widen", "dec_out", "last_layer", "out_act")

    def __init__(self, in_shape, out_shape, channels=(32, 64, 128), blocks=1, groups=8,
                 latent_channels=None, latent_dim=None, variational=False,
                 output_activation="sigmoid"):
        super().__init__()
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        if len(self.in_shape) != 3 or self.in_shape[1:] != self.out_shape[1:]:
            raise ConfigError(f"{type(self).__name__} needs images (C, H, W) in and out of the "
                              f"same size; the dataset gives {self.in_shape} -> {self.out_shape}")
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1:
            raise ConfigError(f"model.channels needs at least one width >= 1, got {channels}")
        if int(blocks) < 1 or int(groups) < 1:
            raise ConfigError(f"model.blocks and model.groups must be >= 1, got {blocks}, {groups}")
        levels, self.variational = len(channels), variational
        self.sizes = halvings(self.in_shape[1:], levels, ceil=True)
        check_sizes(self.sizes, "resconv model")
        c_lat = int(latent_channels or channels[-1])
        # the conv-Gaussian (no dense bottleneck) needs mu and log-variance maps: twice the channels
        map_gauss = variational and latent_dim is None
        enc = [nn.Conv2d(self.in_shape[0], channels[0], 3, 1, 1)]
        width = channels[0]
        for c in channels:
            enc += [stage(width, c, blocks, groups), nn.Conv2d(c, c, 3, 2, 1)]
            width = c
        enc += [ResBlock(width, width, groups), norm(width, groups), nn.SiLU(),
                nn.Conv2d(width, c_lat * (2 if map_gauss else 1), 3, 1, 1)]
        self.encoder = nn.Sequential(*enc)
        self.feature_shape = (c_lat, *self.sizes[-1])
        flat = math.prod(self.feature_shape)
        self.latent_dim = flat if latent_dim is None else int(latent_dim)
        if latent_dim is None:
            self.bottleneck, self.unbottleneck = None, None
        else:
            self.bottleneck = GaussianHead(flat, self.latent_dim) if variational else nn.Linear(flat, self.latent_dim)
            self.unbottleneck = nn.Linear(self.latent_dim, flat)
        back = channels[::-1]
        self.dec_in = nn.Sequential(nn.Conv2d(c_lat, back[0], 3, 1, 1), ResBlock(back[0], back[0], groups))
        self.dec_stages = nn.ModuleList(stage(a, b, blocks, groups) for a, b in zip(back, back))
        self.ups = nn.ModuleList(Up(c) for c in back)
        self.widen = nn.ModuleList(nn.Identity() if a == b else nn.Conv2d(a, b, 1)
                                   for a, b in zip(back, back[1:] + back[-1:]))
        self.dec_out = nn.Sequential(norm(back[-1], groups), nn.SiLU())
        self.last_layer = nn.Conv2d(back[-1], self.out_shape[0], 3, 1, 1)
        self.out_act = make_act(output_activation)

    def _code(self, x):
        """(z, extras, feature-map sizes of this input)."""
        sizes = halvings(x.shape[-2:], len(self.ups), ceil=True)
        h = self.encoder(x)
        if self.bottleneck is None and self.variational:      # a Gaussian per map position
            mu, logvar = (t.flatten(1) for t in h.chunk(2, dim=1))
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
            return z, {"mu": mu, "logvar": logvar}, sizes
        h = h.flatten(1)
        if self.bottleneck is None:
            return h, {}, sizes
        if self.variational:
            z, extras = self.bottleneck(h, self.training)
            return z, extras, sizes
        return self.bottleneck(h), {}, sizes

    def encode(self, x):
        z, extras, _ = self._code(x)
        return extras["mu"] if self.variational else z

    def decode(self, z, sizes=None):
        sizes = sizes or self.sizes
        h = z if self.unbottleneck is None else self.unbottleneck(z)
        h = self.dec_in(h.view(z.shape[0], self.feature_shape[0], *sizes[-1]))
        for body, up, widen, size in zip(self.dec_stages, self.ups, self.widen, sizes[-2::-1]):
            h = widen(up(body(h), size))
        return self.out_act(self.last_layer(self.dec_out(h)))

    def forward(self, x):
        z, extras, sizes = self._code(x)
        return Output(self.decode(z, sizes), z, extras)
