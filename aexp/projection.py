"""2-D views of a latent space for the explorer, each able to map plane points back to latent
points so the decoder can be shown over the visible plane.

`raw` keeps a 2-D latent as it is (a 1-D latent gets y = 0), `pca` projects on the top two
principal axes (its inverse is exact on the plane), `tsne` embeds with scikit-learn's t-SNE
(no inverse exists: a plane point maps back to the inverse-distance-weighted mean of the latents
of its nearest embedded points).
"""
import numpy as np

from aexp.errors import ConfigError


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

    def fit(self, z: np.ndarray) -> np.ndarray:
        z = z.astype(np.float64)
        self.mean = z.mean(0)
        _, _, vt = np.linalg.svd(z - self.mean, full_matrices=False)
        comps = vt[:2]
        if comps.shape[0] < 2:  # a 1-D latent: the second axis carries nothing
            comps = np.concatenate([comps, np.zeros_like(comps)])
        if self.reference is not None and self.reference.components.shape == comps.shape:
            signs = np.sign(np.sum(comps * self.reference.components, 1))
            comps = comps * np.where(signs == 0, 1, signs)[:, None]
        self.components = comps
        return self.transform(z)

    def transform(self, z: np.ndarray) -> np.ndarray:
        return (z - self.mean) @ self.components.T

    def inverse(self, p: np.ndarray) -> np.ndarray:
        return self.mean + p @ self.components


class TSNE:
    label = "t-SNE"
    neighbours = 8

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, z: np.ndarray) -> np.ndarray:
        try:
            from sklearn.manifold import TSNE as SkTSNE
        except ImportError:
            raise ConfigError("projection 'tsne' needs scikit-learn (pip install scikit-learn); "
                              "or use --projection pca") from None
        if len(z) < 5:
            raise ConfigError(f"t-SNE needs at least 5 points, got {len(z)}")
        perplexity = min(30.0, (len(z) - 1) / 3)
        p = SkTSNE(2, perplexity=perplexity, init="pca", random_state=self.seed).fit_transform(z)
        self.z, self.p = z.astype(np.float64), p
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
