"""Pooling CNNs: the colourisation network (0-3 max-pooling levels, e.g. L -> ab) and the 32x32
baseline (adaptive max-pool downsampling, dense 1000-d bottleneck).

Both decode back to the input's own size, so either can train under progressive resizing.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from aexp.errors import ConfigError
from aexp.models.base import Autoencoder, Output
from aexp.models.base import activation as make_act
from aexp.models.blocks import check_sizes, conv_bn_act, halvings


def _channels(shape, given, side: str) -> int:
    """Channels from the dataset; a configured number must agree with it."""
    if given is not None and given != shape[0]:
        raise ConfigError(f"model.{side}_channels={given} but the dataset gives {shape[0]} "
                          f"{side}put channels (shape {tuple(shape)}); pick a matching model or dataset")
    return shape[0]


class GridMaxPool(nn.AdaptiveMaxPool2d):
    """Adaptive max-pooling to a fixed grid that takes the plain max-pool path when the input's
    sides are multiples of the grid's: the windows, the values and the gradient's routing are
    then the same (a test checks it, ties included), and under bf16 autocast on the CPU plain
    max-pooling ran the published baseline's two pools about twice as fast. Other sizes (a
    progressive-resizing stage, an odd size) keep the adaptive windows."""

    def forward(self, x):
        (h, w), g = x.shape[-2:], self.output_size
        gh, gw = (g, g) if isinstance(g, int) else g
        if gh and gw and h % gh == 0 and w % gw == 0:
            return F.max_pool2d(x, (h // gh, w // gw))
        return super().forward(x)


def _images(model, in_shape, out_shape):
    if len(in_shape) != 3 or len(out_shape) != 3 or in_shape[1:] != out_shape[1:]:
        raise ConfigError(f"{model} needs images (C, H, W) in and out of the same size; "
                          f"the dataset gives {tuple(in_shape)} -> {tuple(out_shape)}")


class PoolingCNN(Autoencoder):
    """Colourisation CNN. Each level: MaxPool(kernel 5, stride 2, padding 2), then a stride-1
    transposed conv (kernel 5) + activation + BatchNorm (BatchNorm after the activation). The
    decoder mirrors it with nearest upsampling; the output is clamped by HardTanh(0, 1).
    `pooling` (0-3) is one option, so a depth sweep is one multirun."""
    decoder_parts = ("up", "head")

    def __init__(self, in_shape, out_shape, pooling=2, width=32, kernel_size=5, activation="relu",
                 in_channels=None, out_channels=None):
        super().__init__()
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        _images("pooling_cnn", self.in_shape, self.out_shape)
        c_in = _channels(self.in_shape, in_channels, "in")
        c_out = _channels(self.out_shape, out_channels, "out")
        if not 0 <= pooling <= 3:
            raise ConfigError(f"model.pooling must be 0, 1, 2 or 3, got {pooling}")
        self.sizes = halvings(self.in_shape[1:], pooling, ceil=True)
        # A level must leave at least 2x2 pixels: a 1x1 map has no spatial layout left to colour.
        check_sizes(self.sizes, "pooling_cnn", smallest=2)
        k, pad = kernel_size, kernel_size // 2

        def block(a, b):    # stride-1 transposed conv keeps the size; BatchNorm after activation
            return nn.Sequential(nn.ConvTranspose2d(a, b, k, 1, pad), make_act(activation),
                                 nn.BatchNorm2d(b))

        self.stem = block(c_in, width)
        self.down = nn.ModuleList([nn.Sequential(nn.MaxPool2d(5, 2, 2), block(width, width))
                                   for _ in range(pooling)])
        self.up = nn.ModuleList([block(width, width) for _ in range(pooling)])
        self.head = nn.Sequential(nn.ConvTranspose2d(width, c_out, k, 1, pad), nn.Hardtanh(0.0, 1.0))
        self.latent_dim = width * math.prod(self.sizes[-1])
        self.width = width

    def _encode(self, x):
        h = self.stem(x)
        for level in self.down:
            h = level(h)
        return h

    def encode(self, x):
        return self._encode(x).flatten(1)

    def decode(self, z, sizes=None):
        sizes = sizes or self.sizes
        h = z.view(z.shape[0], self.width, *sizes[-1])
        for block, size in zip(self.up, sizes[-2::-1]):
            h = block(F.interpolate(h, size=size, mode="nearest"))
        return self.head(h)

    def forward(self, x):
        h = self._encode(x)
        sizes = halvings(x.shape[-2:], len(self.down), ceil=True)
        return Output(self.decode(h.flatten(1), sizes), h.flatten(1), {})


class Baseline32(Autoencoder):
    """The 32x32 baseline: conv + BatchNorm + ReLU stages each followed by adaptive max-pooling to
    16, 8 and 4 pixels, a dense bottleneck (1000-d by default), and a decoder of nearest-upsample +
    conv blocks back to the input's size, clamped to [0, 1]. Adaptive pooling makes the encoder
    take any size from 4x4 up, so the same weights train at 16x16 and then at 32x32.
    `head=False` drops the full-size conv stage: with channels [12, 24] and grid [16, 8] this is
    the published baseline exactly (its decoder's second upsampling conv gives the image)."""
    decoder_parts = ("from_code", "decoder", "head")

    def __init__(self, in_shape, out_shape, channels=(32, 64, 128), latent_dim=1000,
                 grid=(16, 8, 4), activation="relu", output="clamp", code_activation=None,
                 head=True):
        super().__init__()
        if output not in OUTPUTS:
            raise ConfigError(f"model.output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        self.output = output
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        _images("baseline32", self.in_shape, self.out_shape)
        channels, grid = list(channels), list(grid)
        if len(channels) != len(grid):
            raise ConfigError(f"model.channels ({len(channels)}) and model.grid ({len(grid)}) "
                              f"must have one entry per stage")
        if min(self.in_shape[1:]) < grid[-1]:
            raise ConfigError(f"baseline32 pools down to {grid[-1]}x{grid[-1]}; the dataset's "
                              f"{self.in_shape[1]}x{self.in_shape[2]} images are smaller")
        widths = [self.in_shape[0]] + channels
        self.encoder = nn.Sequential(*[
            nn.Sequential(conv_bn_act(a, b, act=activation), GridMaxPool(g))
            for a, b, g in zip(widths[:-1], widths[1:], grid)], nn.Flatten())
        self.feature_shape = (channels[-1], grid[-1], grid[-1])
        flat = math.prod(self.feature_shape)
        self.latent_dim = latent_dim
        # The code's own activation; unset = the stages' one. "none" keeps the bottleneck linear,
        # so no code unit can die (a ReLU code left about a third of 1000 units at zero).
        self.to_code = nn.Sequential(nn.Linear(flat, latent_dim),
                                     make_act(code_activation or activation))
        self.from_code = nn.Sequential(nn.Linear(latent_dim, flat), make_act(activation))
        back = channels[::-1]
        up = lambda *layers: nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), *layers)
        out = nn.Conv2d(back[-1], self.out_shape[0], 3, 1, 1)
        if head:   # every upsampling block keeps its width; a 3x3 conv at full size gives the image
            self.decoder = nn.Sequential(*[up(conv_bn_act(a, b, act=activation))
                                           for a, b in zip(back, back[1:] + [back[-1]])])
            self.head = out
        else:      # the published decoder: the last upsampling block's conv gives the image
            self.decoder = nn.Sequential(*[up(conv_bn_act(a, b, act=activation))
                                           for a, b in zip(back, back[1:])], up(out))
            self.head = nn.Identity()

    def encode(self, x):
        return self.to_code(self.encoder(x))

    def decode(self, z, size=None):
        h = self.decoder(self.from_code(z).view(z.shape[0], *self.feature_shape))
        size = tuple(size or self.out_shape[1:])
        if tuple(h.shape[-2:]) != size:   # a resize to the same size would still copy (fwd and bwd)
            h = F.interpolate(h, size=size, mode="nearest")
        return OUTPUTS[self.output](self.head(h))

    def forward(self, x):
        z = self.encode(x)
        return Output(self.decode(z, x.shape[-2:]), z, {})


def clamp_straight_through(h):
    """Clamp to [0, 1] in the forward pass, identity in the backward pass: an output pushed past
    a bound still gets the gradient that pulls it back (a plain clamp gives it none, so a
    stroke pixel predicted below 0 never learns from that image)."""
    return h + (h.clamp(0.0, 1.0) - h).detach()


OUTPUTS = {"clamp_st": clamp_straight_through, "clamp": lambda h: h.clamp(0.0, 1.0),
           "sigmoid": torch.sigmoid}
