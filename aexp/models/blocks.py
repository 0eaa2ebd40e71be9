"""Building blocks shared by the convolutional models: conv + BatchNorm + activation, decoder
upsampling (one option, three ways), the stride-2 size arithmetic that lets a decoder come back
to any input size, and the optional variational head.

Every upsampler is called as `up(x, size)` and returns exactly `size` (H, W): the decoder records
the encoder's feature-map sizes, so odd sides (7, 109, 89...) come back without guessing.
"""
import torch
import torch.nn.functional as F
from torch import nn

from aexp.errors import ConfigError
from aexp.models.base import activation as make_act


def conv_bn_act(c_in, c_out, kernel=3, stride=1, act="relu", bn_first=True):
    """Conv -> BatchNorm -> activation (or conv -> activation -> BatchNorm with bn_first=False,
    the order the colourisation CNN uses)."""
    # Stride 2 uses kernel 4, padding 1: it halves any side exactly (floor), see `halvings`.
    conv = (nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False) if stride == 2 else
            nn.Conv2d(c_in, c_out, kernel, 1, kernel // 2, bias=False))
    tail = [nn.BatchNorm2d(c_out), make_act(act)] if bn_first else [make_act(act), nn.BatchNorm2d(c_out)]
    return nn.Sequential(conv, *tail)


def halvings(size: tuple, levels: int, ceil: bool = False) -> list:
    """Feature-map sizes [(H, W), (H/2, W/2), ...] after `levels` stride-2 stages."""
    sizes = [tuple(size)]
    for _ in range(levels):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2) if ceil else (h // 2, w // 2))
    return sizes


def check_sizes(sizes: list, what: str, smallest: int = 1) -> None:
    """A clear ConfigError when downsampling shrinks the image below `smallest` pixels."""
    h, w = sizes[-1]
    if min(h, w) < smallest:
        need = smallest * 2 ** (len(sizes) - 1)
        raise ConfigError(
            f"{what}: {len(sizes) - 1} downsampling levels shrink a {sizes[0][0]}x{sizes[0][1]} "
            f"image to {h}x{w}; images need at least {need}x{need} (use fewer levels)")


class TransposeUp(nn.Module):
    """Transposed conv, kernel 4 stride 2 padding 1; output_padding follows from the target
    size (that is how odd sides come back)."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)

    def forward(self, x, size):
        return self.conv(x, output_size=list(size))


class NearestUp(nn.Module):
    """Nearest-neighbour resize to the target size, then a 3x3 conv (no checkerboard)."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, 1, 1)

    def forward(self, x, size):
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


def icnr_(weight: torch.Tensor, scale: int = 2) -> None:
    """ICNR initialisation (Aitken et al. 2017): each group of scale^2 output channels starts
    identical, so the pixel shuffle initially equals a nearest upsampling (no checkerboard)."""
    c_out, c_in, kh, kw = weight.shape
    sub = torch.empty(c_out // scale ** 2, c_in, kh, kw)
    nn.init.kaiming_normal_(sub)
    with torch.no_grad():
        weight.copy_(sub.repeat_interleave(scale ** 2, dim=0))


class ShuffleUp(nn.Module):
    """Sub-pixel conv: 3x3 conv to 4x channels (ICNR init), PixelShuffle(2), then the blur of
    Sugawara et al. 2019 (replication pad + 2x2 average pool) that removes the remaining
    checkerboard artefacts; cropped to the target size when a side was odd."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out * 4, 3, 1, 1)
        icnr_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)      # equal biases too, or the sub-pixels start apart
        self.shuffle = nn.PixelShuffle(2)
        self.blur = nn.Sequential(nn.ReplicationPad2d((1, 0, 1, 0)), nn.AvgPool2d(2, stride=1))

    def forward(self, x, size):
        x = self.blur(self.shuffle(self.conv(x)))
        h, w = size
        if x.shape[-2] < h or x.shape[-1] < w:   # only when the caller's size is not a doubling
            x = F.interpolate(x, size=(h, w), mode="nearest")
        return x[..., :h, :w]


# Decoder upsampling, chosen by name in config (`upsample: transpose | nearest | shuffle`).
UPSAMPLERS = {"transpose": TransposeUp, "nearest": NearestUp, "shuffle": ShuffleUp}


def upsampler(name: str, c_in: int, c_out: int) -> nn.Module:
    try:
        return UPSAMPLERS[name](c_in, c_out)
    except KeyError:
        raise ConfigError(f"unknown upsample '{name}'; choose from {', '.join(UPSAMPLERS)}") from None


class UpBlock(nn.Module):
    """Upsample to a size, then BatchNorm + activation (the last decoder stage skips them)."""

    def __init__(self, mode, c_in, c_out, act="relu", last=False):
        super().__init__()
        self.up = upsampler(mode, c_in, c_out)
        self.post = nn.Identity() if last else nn.Sequential(nn.BatchNorm2d(c_out), make_act(act))

    def forward(self, x, size):
        return self.post(self.up(x, size))


class GaussianHead(nn.Module):
    """Variational head on a flat feature vector: (mu, log-variance) and the reparameterised
    sample while training, mu at evaluation."""

    def __init__(self, width, latent_dim):
        super().__init__()
        self.mu = nn.Linear(width, latent_dim)
        self.logvar = nn.Linear(width, latent_dim)

    def forward(self, h, training: bool):
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if training else mu
        return z, {"mu": mu, "logvar": logvar}
