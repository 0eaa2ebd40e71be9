"""Convolutional autoencoder and convolutional VAE on one backbone.

Encoder: `len(channels)` stages of stride-2 conv (kernel 4) + BatchNorm + ReLU. Decoder: the
mirror, upsampling back to the encoder's recorded sizes, so any input size (28x28, 32x32,
128x128, 218x178...) comes back at its own size. With `latent_dim` set, a dense bottleneck sits
between them (required for the VAE); without it the code is the last feature map, flattened.
With `codebook` set (VQ-VAE), a 1x1 conv maps the last feature map to the codebook's dimension
and every position is quantised to its nearest code (`models/quantize.py`); the code is the
quantised map, flattened, and `decode` snaps whatever it is given to the codebook. With
`quantizer` set instead (a built module, e.g. FSQ, `models/fsq.py`), that module quantises the
map the same way (its `dim` channels, its `size` codes, its implicit `codebook`).
"""
import math

from torch import nn

from aexp.errors import ConfigError
from aexp.models.base import Autoencoder, Output
from aexp.models.base import activation as make_act
from aexp.models.blocks import GaussianHead, UpBlock, check_sizes, conv_bn_act, halvings
from aexp.models.quantize import VectorQuantizer


class ConvAE(Autoencoder):
    decoder_parts = ("unbottleneck", "post_vq", "decoder", "out_act")   # not a VQ codebook

    def __init__(self, in_shape, out_shape, channels=(32, 64, 128), latent_dim=None,
                 upsample="transpose", activation="relu", output_activation="sigmoid",
                 variational=False, codebook=None, quantizer=None):
        super().__init__()
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        if len(self.in_shape) != 3 or self.in_shape[1:] != self.out_shape[1:]:
            raise ConfigError(f"{type(self).__name__} needs images (C, H, W) in and out of the "
                              f"same size; the dataset gives {self.in_shape} -> {self.out_shape}")
        channels = list(channels)
        if not channels:
            raise ConfigError("model.channels is empty; give at least one encoder stage")
        if variational and latent_dim is None:
            raise ConfigError("a convolutional VAE needs a dense bottleneck: set model.latent_dim")
        if codebook is not None and quantizer is not None:
            raise ConfigError("give model.codebook (VQ) or model.quantizer (e.g. FSQ), not both: "
                              "set the other to null")
        if quantizer is not None and not isinstance(quantizer, nn.Module):
            raise ConfigError(f"model.quantizer must name a quantiser module with _target_ "
                              f"(e.g. aexp.models.fsq.FSQ), got {type(quantizer).__name__}")
        if (codebook is not None or quantizer is not None) and (variational or latent_dim is not None):
            raise ConfigError("a VQ model (model.codebook or model.quantizer) quantises the last "
                              "feature map: set model.latent_dim=null and model.variational=false")
        self.sizes = halvings(self.in_shape[1:], len(channels))
        check_sizes(self.sizes, "conv model")
        self.variational = variational
        widths = [self.in_shape[0]] + channels
        self.encoder = nn.Sequential(*[conv_bn_act(a, b, stride=2, act=activation)
                                       for a, b in zip(widths[:-1], widths[1:])])
        self.feature_shape = (channels[-1], *self.sizes[-1])
        flat = math.prod(self.feature_shape)
        self.latent_dim = latent_dim if latent_dim is not None else flat
        self.quantizer = quantizer
        if codebook is not None:
            self.quantizer = VectorQuantizer(**codebook)
        if self.quantizer is not None:
            self.codebook_size = self.quantizer.size
            self.pre_vq = nn.Conv2d(channels[-1], self.quantizer.dim, 1)
            self.post_vq = nn.Conv2d(self.quantizer.dim, channels[-1], 1)
            self.latent_dim = self.quantizer.dim * math.prod(self.sizes[-1])
        if latent_dim is None:
            self.bottleneck, self.unbottleneck = None, None
        elif variational:
            self.bottleneck, self.unbottleneck = GaussianHead(flat, latent_dim), nn.Linear(latent_dim, flat)
        else:
            self.bottleneck, self.unbottleneck = nn.Linear(flat, latent_dim), nn.Linear(latent_dim, flat)
        back = channels[::-1] + [self.out_shape[0]]
        self.decoder = nn.ModuleList([
            UpBlock(upsample, a, b, activation, last=(i == len(back) - 2))
            for i, (a, b) in enumerate(zip(back[:-1], back[1:]))])
        self.out_act = make_act(output_activation)

    def _code(self, x):
        """(z, extras, feature-map sizes of this input)."""
        sizes = halvings(x.shape[-2:], len(self.decoder))
        if self.quantizer is not None:
            zq, extras = self.quantizer(self.pre_vq(self.encoder(x)))
            return zq.flatten(1), extras, sizes
        h = self.encoder(x).flatten(1)
        if self.bottleneck is None:
            return h, {}, sizes
        if self.variational:
            z, extras = self.bottleneck(h, self.training)
            return z, extras, sizes
        return self.bottleneck(h), {}, sizes

    @property
    def last_layer(self) -> nn.Module:
        """The decoder's final conv (read by loss terms that weigh themselves by its gradient:
        aexp.losses.patchgan's adaptive weight)."""
        return self.decoder[-1].up.conv

    def encode(self, x):
        z, extras, _ = self._code(x)
        return extras["mu"] if self.variational else z

    def code_indices(self, x):
        if self.quantizer is None:
            return None
        h = self.pre_vq(self.encoder(x))
        flat = h.permute(0, 2, 3, 1).reshape(-1, self.quantizer.dim)
        return self.quantizer.nearest(flat).view(len(x), *h.shape[2:])

    def decode(self, z, sizes=None, snap=True):
        sizes = sizes or self.sizes
        if self.quantizer is not None:
            h = z.reshape(z.shape[0], self.quantizer.dim, *sizes[-1])
            h = self.post_vq(self.quantizer.snap(h) if snap else h)
        else:
            h = z if self.unbottleneck is None else self.unbottleneck(z)
            h = h.view(z.shape[0], self.feature_shape[0], *sizes[-1])
        for block, size in zip(self.decoder, sizes[-2::-1]):
            h = block(h, size)
        return self.out_act(h)

    def forward(self, x):
        z, extras, sizes = self._code(x)
        return Output(self.decode(z, sizes, snap=False), z, extras)   # z is on the codebook already
