"""Vector quantisation (VQ-VAE, van den Oord et al. 2017): each position of a feature map is
replaced by its nearest codebook vector; gradients pass straight through to the encoder.

aexp's own ~70 lines rather than `vector-quantize-pytorch`: the parts VQ-VAE needs (nearest
code, straight-through, EMA codebook, dead-code restarts) are short and stable, the library's
API and dependencies (einops, einx) change often, and here every piece is tested in place.

Codebook, two ways (`ema`):
- `ema` in (0, 1) (default 0.99): the codebook is the EMA of the encodings assigned to each code
  (Laplace-smoothed counts); it gets no gradient and the loss needs only the commitment term;
- `ema: null`: the codebook is a parameter learned through the codebook loss ||sg(e) - q||².
Dead codes: a code whose EMA assignment count (assignments per batch) falls below
`restart_below` is moved to a random encoding of the current batch (also how the codebook
starts: every count begins at 0, so the first batch seen in training mode seeds it from real
encodings; in `aexp train` that is the loop's two-sample preflight check).
Under DDP the counts and sums are summed over ranks and restarts come from rank 0.
`init: kmeans` starts the codebook instead from k-means over the first training batch's
encodings (`kmeans.py`): every code begins at a cluster of encodings, none at an outlier."""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from aexp.errors import ConfigError
from aexp.models.kmeans import INITS, KMeansInit, nearest

USAGE_DECAY = 0.99   # how fast a learned (non-EMA) codebook's usage counts forget


def usage(codes: torch.Tensor, size: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes used, perplexity) of a set of code indices, as tensors on their device: the
    perplexity is exp of the code distribution's entropy, `size` if every code were used equally.
    The loss logs it per batch; the evaluation over the whole test set (in float64). Integer
    counts carry no gradient, so no no_grad block is needed (one would break torch.export)."""
    counts = torch.bincount(codes.flatten().long(), minlength=size).to(dtype)
    p = counts / counts.sum()
    return (counts > 0).sum(), torch.exp(-(p * p.clamp_min(torch.finfo(dtype).tiny).log()).sum())


class VectorQuantizer(KMeansInit, nn.Module):
    def __init__(self, size: int = 512, dim: int = 64, ema: float | None = 0.99,
                 restart_below: float = 1.0, eps: float = 1e-5, init: str = "random",
                 kmeans_iters: int = 10):
        super().__init__()
        if size < 2 or dim < 1:
            raise ConfigError(f"model.codebook needs size >= 2 and dim >= 1, got {size} and {dim}")
        if ema is not None and not 0 < ema < 1:
            raise ConfigError(f"model.codebook.ema must be in (0, 1) or null, got {ema}")
        if init not in INITS or kmeans_iters < 0:
            raise ConfigError(f"model.codebook.init must be one of {', '.join(INITS)} and "
                              f"kmeans_iters >= 0, got {init!r} and {kmeans_iters}")
        self.size, self.dim, self.ema, self.restart_below, self.eps = size, dim, ema, restart_below, eps
        self.init, self.kmeans_iters = init, kmeans_iters
        start = torch.randn(size, dim)
        if ema is None:
            self.codebook = nn.Parameter(start)
        else:
            self.register_buffer("codebook", start)
            self.register_buffer("embed_sum", start.clone())
        self.register_buffer("count", torch.zeros(size))   # EMA of assignments per batch
        if init == "kmeans":   # only then: a random-init checkpoint keeps its old entries
            self.add_kmeans_state()

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared Euclidean) for each row of `flat` [N, dim]."""
        return nearest(flat, self.codebook)

    def snap(self, h: torch.Tensor) -> torch.Tensor:
        """A feature map [B, dim, H, W] with every position replaced by its nearest code."""
        flat = h.permute(0, 2, 3, 1).reshape(-1, self.dim)
        q = F.embedding(self.nearest(flat), self.codebook).to(h.dtype)
        return q.view(h.shape[0], *h.shape[2:], self.dim).permute(0, 3, 1, 2)

    def forward(self, h: torch.Tensor):
        """(straight-through quantised map, extras): extras hold the encoder output `vq_e`, the
        chosen codes `vq_q` (a gradient only when the codebook is a parameter), `codes`, and
        the batch's codebook usage (`vq_used`, `vq_perplexity`)."""
        flat = h.permute(0, 2, 3, 1).reshape(-1, self.dim)
        if self.training and self.init == "kmeans" and torch.is_grad_enabled():
            # once per run, on the first training step (not the no-grad preflight check)
            self.seed_by_kmeans(flat.detach().float())
        idx = self.nearest(flat)
        if self.training:
            self._update(flat.detach().float(), idx)
        q = F.embedding(idx, self.codebook).to(h.dtype).view(h.shape[0], *h.shape[2:], self.dim)
        q = q.permute(0, 3, 1, 2)
        codes = idx.view(h.shape[0], *h.shape[2:])
        used, perplexity = usage(codes, self.size)
        return h + (q - h).detach(), {"vq_e": h, "vq_q": q, "codes": codes, "vq_used": used,
                                      "vq_perplexity": perplexity, "vq_ema": self.ema is not None}

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        counts = torch.bincount(idx, minlength=self.size).float()
        sums = torch.zeros(self.size, self.dim, device=flat.device).index_add_(0, idx, flat)
        if dist.is_available() and dist.is_initialized():
            for t in (counts, sums):
                dist.all_reduce(t)
        decay = self.ema or USAGE_DECAY
        self.count.mul_(decay).add_(counts, alpha=1 - decay)
        if self.ema is not None:
            self.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
            n = self.count.sum()
            smoothed = (self.count + self.eps) / (n + self.size * self.eps) * n
            self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(1))
        # Restarts without asking the device whether any code is dead (that would sync the host
        # every step): a candidate encoding is drawn for every code and kept where it is dead.
        dead = (self.count < self.restart_below).unsqueeze(1)
        fresh = flat[torch.randint(0, len(flat), (self.size,), device=flat.device)]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(fresh, 0)
        self.codebook.data.copy_(torch.where(dead, fresh.to(self.codebook.dtype), self.codebook.data))
        self.count.copy_(torch.where(dead[:, 0], torch.full_like(self.count, self.restart_below), self.count))
        if self.ema is not None:
            self.embed_sum.copy_(torch.where(dead, fresh * self.restart_below, self.embed_sum))
