"""A small PixelCNN (van den Oord et al. 2016) over a VQ-VAE's code maps: the prior over code
indices that lets a VQ-VAE generate (`aexp prior RUN` trains it, aexp/run/prior.py; `aexp
sample RUN --sampler prior` draws from it). Not an autoencoder: it models p(code map) as a
product over positions in raster order, each position's code given the ones above and to its
left, through masked convolutions (the first one of type A, which hides the position itself;
the others of type B, with residual connections).

A plain stack of masked convolutions has a blind spot (positions above and to the right fall
out of the receptive field as it grows); on the 7x7 maps of a small VQ-VAE the gated two-stack
version would buy little, so this stays the short one."""
import torch
import torch.nn.functional as F
from torch import nn

from aexp.errors import ConfigError


class MaskedConv2d(nn.Conv2d):
    """A same-size convolution that sees only the rows above and, on its own row, the columns
    to the left (type A) or also the centre (type B)."""

    def __init__(self, a: int, b: int, kernel: int, kind: str):
        super().__init__(a, b, kernel, padding=kernel // 2)
        mask = torch.zeros(kernel, kernel)
        mask[:kernel // 2] = 1
        mask[kernel // 2, :kernel // 2 + (kind == "B")] = 1
        self.register_buffer("mask", mask[None, None])

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNN(nn.Module):
    """Code embedding -> a type-A masked conv (`kernel`) -> `layers` residual type-B masked convs
    (3x3) -> two 1x1 convs to `codebook_size` logits per position."""

    def __init__(self, codebook_size: int, channels: int = 64, layers: int = 5, kernel: int = 5):
        super().__init__()
        if codebook_size < 2 or channels < 1 or layers < 0 or kernel < 3 or kernel % 2 == 0:
            raise ConfigError(f"the PixelCNN prior needs codebook_size >= 2, channels >= 1, layers "
                              f">= 0 and an odd kernel >= 3, got {codebook_size}, {channels}, "
                              f"{layers}, {kernel}")
        self.codebook_size = codebook_size
        self.embed = nn.Embedding(codebook_size, channels)
        self.first = MaskedConv2d(channels, channels, kernel, "A")
        self.blocks = nn.ModuleList([MaskedConv2d(channels, channels, 3, "B") for _ in range(layers)])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
                                  nn.Conv2d(channels, codebook_size, 1))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Code maps [B, H, W] (int) -> logits [B, K, H, W]."""
        h = self.first(self.embed(codes.long()).permute(0, 3, 1, 2))
        for block in self.blocks:
            h = h + block(F.relu(h))
        return self.head(h)

    def nll(self, codes: torch.Tensor) -> torch.Tensor:
        """-log p(code map) in nats, one value per map [B]."""
        return F.cross_entropy(self(codes), codes.long(), reduction="none").flatten(1).sum(1)

    @torch.no_grad()
    def sample(self, n: int, size: tuple, gen: torch.Generator) -> torch.Tensor:
        """`n` code maps of `size` (H, W), drawn position by position in raster order."""
        dev = self.embed.weight.device
        codes = torch.zeros(n, *size, dtype=torch.long, device=dev)
        for i in range(size[0]):
            for j in range(size[1]):
                p = torch.softmax(self(codes)[:, :, i, j].float(), dim=1).cpu()
                codes[:, i, j] = torch.multinomial(p, 1, generator=gen)[:, 0].to(dev)
        return codes
