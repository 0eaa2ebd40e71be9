"""How good a set of samples is, on the features of aexp's own per-dataset classifier
(report/quality.py's `ClassifierFeatures`, 128 values an image):
- precision and recall (Kynkäänniemi et al. 2019): the real set's manifold is the union of balls
  around each real feature reaching its k-th nearest real neighbour; precision is the share of
  samples inside it (are samples realistic?), recall the share of real images inside the
  samples' own manifold (do samples cover the data?);
- fid_classifier and kid_classifier of the samples against the same real images.

Each sampler is reported beside its floor and its ceiling on the same real images (the test
split): `pixel_gaussian`, images drawn from one Gaussian fitted to the training pixels (what a
sampler that learned nothing of the code space but the pixel means and covariances reaches), and
`train_images`, as many real training images (what a perfect sampler reaches: two draws of the
data itself)."""
import torch

from aexp.report import quality


def knn_radii(feats: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (itself excluded)."""
    k = min(k, len(feats) - 1)
    if k < 1:
        return torch.zeros(len(feats))
    out = []
    for i in range(0, len(feats), chunk):
        d = torch.cdist(feats[i:i + chunk].double(), feats.double())
        out.append(d.kthvalue(k + 1, dim=1).values)   # the 1st is the row itself (distance 0)
    return torch.cat(out)


def inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
           chunk: int = 1024) -> torch.Tensor:
    """Whether each point lies in at least one ball (centre, radius), boundary included."""
    out = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i:i + chunk].double(), centres.double())
        out.append((d <= radii[None].double()).any(1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict:
    """Precision and recall of `fake` features against `real` ones, k-NN manifolds."""
    real, fake = real.flatten(1).cpu(), fake.flatten(1).cpu()
    precision = inside(fake, real, knn_radii(real, k)).double().mean().item()
    recall = inside(real, fake, knn_radii(fake, k)).double().mean().item()
    return {"precision": precision, "recall": recall, "k": int(k)}


@torch.no_grad()
def features(extractor, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """The classifier's features of images in [0, 1] (on the extractor's device), on the CPU."""
    dev = next(extractor.parameters()).device
    return torch.cat([extractor(images[i:i + batch].to(dev)).float().cpu()
                      for i in range(0, len(images), batch)])


def score(extractor, real: torch.Tensor, fake: torch.Tensor, k: int,
          real_feats: torch.Tensor | None = None) -> dict:
    """Precision/recall and (with torchmetrics) FID/KID of `fake` images against `real` ones
    (RGB-like views in [0, 1], as many of each)."""
    n = min(len(real), len(fake))
    real, fake = real[:n], fake[:n]
    real_feats = features(extractor, real) if real_feats is None else real_feats[:n]
    out = {**precision_recall(real_feats, features(extractor, fake), k), "images": n}
    if quality.available():
        with torch.random.fork_rng(devices=[]):   # KID draws its subsets from torch's generator
            torch.manual_seed(0)
            dev = next(extractor.parameters()).device
            fid = quality.fid_kid(extractor, real.to(dev), fake.to(dev))
        out.update({k2: fid[k2] for k2 in ("fid_classifier", "kid_classifier", "kid_classifier_std")})
    else:
        out["fid_skipped"] = "torchmetrics is not installed (pip install -e '.[metrics]')"
    return out


def pixel_gaussian(train: torch.Tensor, n: int, gen: torch.Generator, max_full: int = 4096) -> torch.Tensor:
    """`n` images from one Gaussian fitted to the training images' pixels (full covariance up to
    `max_full` values an image, else per pixel), clamped to [0, 1]."""
    x = train.flatten(1).double().cpu()
    mean, d = x.mean(0), x.shape[1]
    eps = torch.randn(n, d, generator=gen, dtype=torch.float64)
    if d <= max_full:
        cov = torch.cov(x.T).reshape(d, d) + 1e-4 * torch.eye(d, dtype=x.dtype)
        draws = mean + eps @ torch.linalg.cholesky(cov).T
    else:
        draws = mean + eps * x.std(0)
    return draws.clamp(0, 1).float().view(n, *train.shape[1:])


def floors(extractor, real: torch.Tensor, train, k: int, seed: int) -> dict:
    """The baseline rows: `pixel_gaussian` (the floor) and `train_images` (the ceiling), each
    scored against `real` like a sampler. `train`: the training views (indexable)."""
    n = min(len(real), len(train))
    gen = torch.Generator().manual_seed(seed)
    train_imgs = train[torch.randperm(len(train), generator=gen)[:n]].float().cpu()
    real_feats = features(extractor, real[:n])
    return {"pixel_gaussian": score(extractor, real, pixel_gaussian(train_imgs, n, gen), k, real_feats),
            "train_images": score(extractor, real, train_imgs, k, real_feats)}
