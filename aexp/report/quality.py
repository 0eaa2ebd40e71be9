"""Sample and reconstruction quality without downloads: FID and KID computed by torchmetrics on
the features of aexp's own per-dataset classifier (its penultimate layer, 128 values), as MNIST
papers do with a LeNet. Named `fid_classifier` / `kid_classifier`: they are not Inception FIDs
and are comparable only between runs on the same dataset (the same cached classifier).

Reported for reconstructions and for samples against the test images, and for the test images
against as many training images: the floor two sets of real images reach. torchmetrics is an
optional extra (`pip install -e '.[metrics]'`); without it the section says so."""
import warnings

import torch
from torch import nn

FEATURES = 128   # the classifier's penultimate width (report/classifier.py SmallCNN)


class ClassifierFeatures(nn.Module):
    """The classifier up to its penultimate layer, as torchmetrics' custom feature extractor."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.body = classifier.net[:-2].eval()       # drops the last dropout and the class layer
        self.num_features = FEATURES

    @torch.no_grad()
    def forward(self, x):
        return self.body(x.float())


def available() -> bool:
    try:   # an optional extra, imported on use (it also takes a second to import)
        import torchmetrics  # noqa: F401
    except ImportError:
        return False
    return True


def fid_kid(features: nn.Module, real: torch.Tensor, fake: torch.Tensor, batch: int = 500) -> dict:
    """FID and KID (mean, std over subsets) of `fake` against `real`, images in [0, 1]."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(real), len(fake))
    fid = FrechetInceptionDistance(feature=features, normalize=True, input_img_size=tuple(real.shape[1:]))
    with warnings.catch_warnings():   # "saves all features in a buffer": 128 floats an image here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=features, normalize=True, subset_size=min(1000, n), subsets=50)
    for metric in (fid, kid):
        metric.to(real.device)
        for i in range(0, n, batch):
            metric.update(real[i:i + batch], real=True)
            metric.update(fake[i:i + batch], real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid_classifier": float(fid.compute()), "kid_classifier": float(kid_mean),
            "kid_classifier_std": float(kid_std), "images": n}


def report(classifier: nn.Module, train: torch.Tensor, test: torch.Tensor, recon: torch.Tensor,
           samples: torch.Tensor | None) -> dict:
    """The quality section of eval.json (RGB-like views in [0, 1], as the classifier sees them)."""
    if not available():
        return {"skipped": "torchmetrics is not installed (pip install -e '.[metrics]')"}
    features = ClassifierFeatures(classifier)
    with torch.random.fork_rng(devices=[]):   # KID draws its subsets from torch's generator
        torch.manual_seed(0)
        out = {"reconstruction": fid_kid(features, test, recon),
               "test_vs_train": fid_kid(features, test, train[:len(test)])}
        if samples is not None:
            out["samples"] = fid_kid(features, test, samples)
    return out
