"""k-means for a VQ codebook's start (`model.codebook.init: kmeans`), and the nearest-code search
the quantiser and k-means share.

Why: a codebook seeded from single random encodings (the default, through dead-code restarts)
puts several codes in a dense region and none in a sparse one, so codes collapse onto few
clusters early. k-means over the first training batch's encodings (k-means++ seeding, then a
pinned number of Lloyd iterations) starts every code at the mean of a cluster of encodings.

Reproducible and resumable: the seeding draws from torch's global generator (seeded by the run's
`seed`); the codebook it gives lives in the quantiser's buffers, and `kmeans_done` (saved with
them) says it happened, so a resumed run never runs it again. `kmeans_inertia` records the mean
squared distance of the batch's encodings to their centre after the last Lloyd iteration. Under
DDP the centres of rank 0 are broadcast, as restarts are."""
import torch
import torch.distributed as dist

INITS = ("random", "kmeans")


def nearest(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest row of `codebook` [K, dim] (squared Euclidean) for each row of `flat`."""
    e = codebook.float()
    d = flat.float().pow(2).sum(1, keepdim=True) - 2 * flat.float() @ e.T + e.pow(2).sum(1)
    return d.argmin(1)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@torch.no_grad()
def kmeans(flat: torch.Tensor, k: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(centres [k, dim], mean squared distance to them) of the rows of `flat` [N, dim]: k-means++
    seeding (each next centre drawn with probability proportional to its squared distance to the
    nearest centre so far), then `iters` Lloyd steps; an empty cluster keeps its centre. Fewer
    rows than k: the seeding draws rows again (uniformly once every row is a centre)."""
    n = len(flat)
    centres = flat[torch.randint(0, n, (1,), device=flat.device)]
    d2 = (flat - centres[0]).pow(2).sum(1)
    for _ in range(1, k):
        weights = d2 if bool(d2.sum() > 0) else torch.ones_like(d2)   # all rows already centres
        c = flat[torch.multinomial(weights, 1)]
        centres = torch.cat([centres, c])
        d2 = torch.minimum(d2, (flat - c[0]).pow(2).sum(1))
    for _ in range(iters):
        idx = nearest(flat, centres)
        counts = torch.bincount(idx, minlength=k).float()
        sums = torch.zeros_like(centres).index_add_(0, idx, flat)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
    inertia = (flat - centres[nearest(flat, centres)]).pow(2).sum(1).mean()
    return centres, inertia


class KMeansInit:
    """The VectorQuantizer's k-means start, kept apart from its per-step update."""

    def add_kmeans_state(self) -> None:
        self.register_buffer("kmeans_done", torch.zeros(()))
        self.register_buffer("kmeans_inertia", torch.zeros(()))
        self._seeded = False   # a host-side cache of kmeans_done: the device is asked once per process

    @torch.no_grad()
    def seed_by_kmeans(self, flat: torch.Tensor) -> None:
        """On the first training step (the quantiser calls it in training mode with gradients
        on, so not on the run's no-grad preflight batch of two samples): codebook <- k-means centres of `flat` (rank 0's), each
        code's count <- its cluster's assignments in this batch (summed over ranks; at least
        `restart_below`, so no code is restarted at once), an EMA codebook's sums to match."""
        if self._seeded:
            return
        self._seeded = True
        if bool(self.kmeans_done):   # a resumed run: the codebook came from the checkpoint
            return
        centres, inertia = kmeans(flat, self.size, self.kmeans_iters)
        if _distributed():
            dist.broadcast(centres, 0)
            dist.broadcast(inertia, 0)
        counts = torch.bincount(nearest(flat, centres), minlength=self.size).float()
        if _distributed():
            dist.all_reduce(counts)
        self.codebook.data.copy_(centres.to(self.codebook.dtype))
        self.count.copy_(counts.clamp_min(self.restart_below))
        if self.ema is not None:
            self.embed_sum.copy_(centres * self.count.unsqueeze(1))
        self.kmeans_inertia.copy_(inertia)
        self.kmeans_done.fill_(1.0)
