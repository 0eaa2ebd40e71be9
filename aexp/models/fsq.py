"""Finite scalar quantisation (FSQ, Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made
Simple"): the conv model's alternative to a learned codebook (`model.quantizer`, conf/model/fsqvae.yaml).

Each of the d = len(levels) channels of the encoder's feature map is bounded (a shifted tanh) to
the interval that rounds to exactly L_i integer levels, rounded with a straight-through gradient,
and rescaled to [-1, 1]. The codebook is implicit: the grid of all prod(levels) level vectors, and
a position's code index is the mixed-radix number of its level indices (channel 0 the lowest
digit), so everything that reads `codes`, `codebook_size` or `quantizer.codebook` (usage logging,
evaluation, the PixelCNN prior, its samples) works on it as on a VQ codebook.

Nothing is learned here and nothing can die: there is no codebook loss, no commitment term, no EMA
and no restart (the `vq` loss term refuses a commitment weight on it; loss=fsq logs usage only).
The module holds no state: the checkpoint of an FSQ model has no quantiser entries."""
import math

import torch
from torch import nn

from aexp.errors import ConfigError
from aexp.models.quantize import usage

EPS = 1e-3   # the paper's margin: tanh's open range still rounds to both end levels


class FSQ(nn.Module):
    def __init__(self, levels=(8, 5, 5, 5)):
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or min(levels) < 2:
            raise ConfigError(f"model.quantizer.levels needs one or more levels, each >= 2, got {levels}")
        self.size, self.dim = math.prod(levels), len(levels)
        if self.size < 2 or self.size > 2**24:
            raise ConfigError(f"model.quantizer.levels give {self.size} codes; keep it within 2..2^24")
        lv = torch.tensor(levels, dtype=torch.float32)
        basis = torch.tensor([math.prod(levels[:i]) for i in range(len(levels))], dtype=torch.long)
        # not persistent: derived from the config, so checkpoints carry nothing of the quantiser
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", basis, persistent=False)

    def bound(self, h: torch.Tensor) -> torch.Tensor:
        """Channel-last values [..., d] squashed so that rounding gives exactly L_i integers:
        {-L/2, ..., L/2 - 1} for even L, {-(L-1)/2, ..., (L-1)/2} for odd L."""
        half = (self.levels - 1) * (1 + EPS) / 2
        offset = (self.levels % 2 == 0).float() * 0.5
        shift = torch.atanh(offset / half)
        return torch.tanh(h + shift) * half - offset

    def _scale(self) -> torch.Tensor:
        return torch.div(self.levels, 2, rounding_mode="floor")

    def quantise(self, h: torch.Tensor) -> torch.Tensor:
        """Channel-last encodings [..., d] -> the grid values in [-1, 1], straight-through."""
        b = self.bound(h.float())
        return (b + (torch.round(b) - b).detach()) / self._scale()

    def indices(self, q: torch.Tensor) -> torch.Tensor:
        """Grid values [..., d] -> code indices [...] (mixed radix of the level indices)."""
        digits = torch.round(q * self._scale() + self._scale()).long()
        return (digits * self.basis).sum(-1)

    def grid(self, idx: torch.Tensor) -> torch.Tensor:
        """Code indices [...] -> grid values [..., d] (the inverse of `indices`)."""
        digits = torch.div(idx.long().unsqueeze(-1), self.basis, rounding_mode="floor") % self.levels.long()
        return (digits.float() - self._scale()) / self._scale()

    @property
    def codebook(self) -> torch.Tensor:
        """The implicit codebook [prod(levels), d]: row i is code i's grid vector."""
        return self.grid(torch.arange(self.size, device=self.levels.device))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """The code index of each encoder output row [N, d] (bounded, then rounded)."""
        return self.indices(self.quantise(flat))

    def snap(self, h: torch.Tensor) -> torch.Tensor:
        """A map [B, d, H, W] already in grid space (a decoded code) moved to the nearest grid
        point, without bounding again: grid points stay where they are."""
        c = h.movedim(1, -1).float()
        digits = torch.minimum(torch.round(c * self._scale() + self._scale()).clamp_min(0), self.levels - 1)
        return ((digits - self._scale()) / self._scale()).to(h.dtype).movedim(-1, 1)

    def forward(self, h: torch.Tensor):
        """(straight-through quantised map [B, d, H, W], extras): the chosen `codes` and the
        batch's usage (`vq_used`, `vq_perplexity`), as VectorQuantizer gives; `vq_fsq` marks
        that there is no codebook to commit to (no `vq_e` / `vq_q`)."""
        c = h.movedim(1, -1)
        q = self.quantise(c)
        codes = self.indices(q.detach())
        used, perplexity = usage(codes, self.size)
        return q.to(h.dtype).movedim(-1, 1), {"codes": codes, "vq_used": used,
                                              "vq_perplexity": perplexity, "vq_fsq": True}
