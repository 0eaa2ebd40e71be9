"""Pictures' shared parts, for training frames (`run/frames.py`) and reports (`report/`) alike:
the class palette, model tensors as uint8 RGB tiles, tiles laid out in a grid, the decoder over
a grid of latent points, and the 2-D projections of a latent space.

Projections, each able to map plane points back to latent points so the decoder can be shown
over the visible plane: `raw` keeps a 2-D latent as it is (a 1-D latent gets y = 0), `pca`
projects on the top two principal axes (its inverse is exact on the plane), `tsne` embeds with
scikit-learn's t-SNE (no inverse exists: a plane point maps back to the inverse-distance-weighted
mean of the latents of its nearest embedded points).
"""
import numpy as np
import torch

from aexp.errors import ConfigError

# matplotlib's tab10, so frames match the plots made with matplotlib.
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
], dtype=np.uint8)


def tiles(t: torch.Tensor, swatch: int = 1) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB tiles [N, H, W, 3]: images [N, C, H, W] as themselves (one
    channel as grey, two as red / green, more than three cut to three), colours [N, 3] as
    `swatch` x `swatch` squares, other vectors [N, D] as a grey strip of D pixels."""
    t = t.detach().float().clamp(0, 1).cpu()
    if t.dim() == 2:
        t = (t[:, :, None, None].expand(-1, -1, swatch, swatch) if t.shape[1] == 3
             else t[:, None, None, :])
    if t.shape[1] == 2:
        t = torch.cat([t, torch.zeros_like(t[:, :1])], 1)
    t = t[:, :3] if t.shape[1] >= 3 else t.expand(-1, 3, -1, -1)
    return (t.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def grid(images: np.ndarray, cols: int, pad: int = 2, gaps=()) -> np.ndarray:
    """Tiles [N, H, W, 3] in rows of `cols` on a white background (`pad` pixels around each);
    an extra gap of 2 * pad before each row listed in `gaps` groups rows visually. One array
    operation, not a loop over tiles: a decoded plane has 10,000 of them."""
    n, h, w, _ = images.shape
    rows = -(-n // cols)
    cells = np.full((rows * cols, h + pad, w + pad, 3), 255, np.uint8)   # pad above and left
    cells[:n, pad:, pad:] = images
    body = cells.reshape(rows, cols, h + pad, w + pad, 3).transpose(0, 2, 1, 3, 4)
    body = body.reshape(rows, h + pad, cols * (w + pad), 3)
    white = lambda height: np.full((height, cols * (w + pad), 3), 255, np.uint8)
    parts = []
    for r in range(rows):
        parts += [white(2 * pad)] * sum(1 for g in gaps if g == r and r > 0) + [body[r]]
    out = np.concatenate(parts + [white(pad)])
    return np.concatenate([out, np.full((len(out), pad, 3), 255, np.uint8)], 1)


def plane_points(bounds, n: int) -> np.ndarray:
    """The centres of an n x n grid over the plane rectangle `bounds` = (x0, x1, y0, y1), row by
    row from the top (largest y) down: [n * n, 2]."""
    x0, x1, y0, y1 = map(float, bounds)
    xs = x0 + (np.arange(n) + 0.5) * (x1 - x0) / n
    ys = y1 - (np.arange(n) + 0.5) * (y1 - y0) / n
    return np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)


@torch.no_grad()
def decode(model, z, batch: int = 1024, label=None) -> torch.Tensor:
    """The decoder's float output for the codes `z` (any array), `batch` codes at a time, on the
    model's device; `label`: the class a conditional model decodes every code as (an int), or
    each code's class (a tensor [N]); its own default (class 0) when None."""
    dev = next(model.parameters()).device
    z = torch.as_tensor(z, dtype=torch.float32)
    if isinstance(label, int):
        label = torch.full((len(z),), label)
    out = []
    for i in range(0, len(z), batch):
        labels = () if label is None else (label[i:i + batch].to(dev),)
        out.append(model.decode(z[i:i + batch].to(dev), *labels).float())
    return torch.cat(out)


def every_class(model, n: int) -> torch.Tensor | None:
    """Labels 0, 1, ..., 0, 1, ... for `n` samples of a conditional model (each class alike),
    for samples that should stand for the whole dataset; None for other models."""
    return torch.arange(n) % model.num_classes if getattr(model, "conditional", False) else None


def decoded(model, data, z, batch: int = 1024, label=None) -> np.ndarray:
    """The decoder's output for the codes `z` as uint8 tiles, shown the way the data shows itself
    (`Data.to_rgb`; a colourisation decoder's a,b over a mid-grey L)."""
    return tiles(data.to_rgb(None, decode(model, z, batch, label)))


class Raw:
    label = "latent"

    def __init__(self, seed: int = 0):
        pass  # deterministic; the seed is for t-SNE

    def fit(self, z: np.ndarray) -> np.ndarray:
        if z.shape[1] > 2:
            raise ConfigError(f"projection 'raw' needs a latent of at most 2 dimensions, "
                              f"this one has {z.shape[1]}; use pca or tsne")
        self.dim = z.shape[1]
        return self.transform(z)

    def transform(self, z: np.ndarray) -> np.ndarray:
        return z if z.shape[1] == 2 else np.concatenate([z, np.zeros_like(z)], 1)

    def inverse(self, p: np.ndarray) -> np.ndarray:
        return p[:, :self.dim]


class PCA:
    label = "PCA"

    def __init__(self, reference: "PCA | None" = None, seed: int = 0):
        self.reference = reference   # axes' signs follow it, so successive epochs do not flip

    @classmethod
    def of(cls, mean: np.ndarray, components: np.ndarray) -> "PCA":
        """A PCA fitted before (e.g. restored from a checkpoint)."""
        pca = cls()
        pca.mean, pca.components = np.asarray(mean, np.float64), np.asarray(components, np.float64)
        return pca

    def fit(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, np.float64)
        self.mean = z.mean(0)
        zc = z - self.mean
        if len(zc) > zc.shape[1]:   # more points than dimensions: the scatter matrix's eigenvectors,
            w, v = np.linalg.eigh(zc.T @ zc)   # the SVD's axes from a d x d problem (10,000 x 1,000
            var, vt = np.clip(w[::-1], 0, None), np.ascontiguousarray(v[:, ::-1].T)   # codes: 0.6 s, not 1.4)
        else:
            _, s, vt = np.linalg.svd(zc, full_matrices=False)
            var = s ** 2
        comps = vt[:2]
        self.explained = float(var[:2].sum() / max(var.sum(), 1e-12))  # variance share
        if comps.shape[0] < 2:  # a 1-D latent: the second axis carries nothing
            comps = np.concatenate([comps, np.zeros_like(comps)])
        if self.reference is not None and self.reference.components.shape == comps.shape:
            signs = np.sign(np.sum(comps * self.reference.components, 1))
            comps = comps * np.where(signs == 0, 1, signs)[:, None]
        self.components = comps
        return self.transform(z)

    def transform(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float64) - self.mean) @ self.components.T

    def inverse(self, p: np.ndarray) -> np.ndarray:
        return self.mean + p @ self.components


class TSNE:
    label = "t-SNE"
    neighbours = 8

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, z: np.ndarray) -> np.ndarray:
        try:   # scikit-learn is imported only when a t-SNE is asked for (it is slow to import)
            from sklearn.manifold import TSNE as SkTSNE
        except ImportError:
            raise ConfigError("projection 'tsne' needs scikit-learn (pip install scikit-learn); "
                              "or use --projection pca") from None
        if len(z) < 5:
            raise ConfigError(f"t-SNE needs at least 5 points, got {len(z)}")
        perplexity = min(30.0, (len(z) - 1) / 3)
        p = SkTSNE(2, perplexity=perplexity, init="pca", random_state=self.seed).fit_transform(z)
        self.z, self.p = np.asarray(z, np.float64), p
        return p

    def transform(self, z):
        raise ConfigError("t-SNE cannot place new points; it only embeds the points it was fit on")

    def inverse(self, p: np.ndarray) -> np.ndarray:
        d = np.sqrt(((p[:, None, :] - self.p[None, :, :]) ** 2).sum(-1))
        near = np.argsort(d, 1)[:, :self.neighbours]
        w = 1.0 / (np.take_along_axis(d, near, 1) + 1e-9)
        return (self.z[near] * w[..., None]).sum(1) / w.sum(1, keepdims=True)


PROJECTIONS = {"raw": Raw, "pca": PCA, "tsne": TSNE}


def choose(name: str, latent_dim: int, seed: int = 0):
    """The projection called `name`; `auto` is raw for latents of 1 or 2 dimensions, else PCA."""
    if name == "auto":
        name = "raw" if latent_dim <= 2 else "pca"
    if name not in PROJECTIONS:
        raise ConfigError(f"unknown projection '{name}' (choose from auto, {', '.join(PROJECTIONS)})")
    return PROJECTIONS[name](seed=seed)
