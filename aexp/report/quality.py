"""Sample and reconstruction quality without downloads: FID and KID computed by torchmetrics on
the features of aexp's own per-dataset classifier (its penultimate layer, 128 values), as MNIST
papers do with a LeNet. Named `fid_classifier` / `kid_classifier`: they are not Inception FIDs
and are comparable only between runs on the same dataset (the same cached classifier).

Reported for reconstructions and for samples against the test images, and for the test images
against as many training images: the floor two sets of real images reach. torchmetrics is an
optional extra (`pip install -e '.[metrics]'`); without it the section says so.

Also here, because they are torchmetrics': MS-SSIM (reconstruction), and an Inception FID
(`fid_inception`) when the user gives a local weights file (nothing downloads; the file is the
torch-fidelity InceptionV3 state dict torchmetrics' FID uses, `eval.inception_weights`).

PSNR and SSIM stay aexp's own (report/measures.py), checked against torchmetrics in the tests:
PSNR agrees to 4e-6 dB and needs no optional extra; torchmetrics' SSIM averages the SSIM map
over reflection-padded borders too, while aexp's (like Wang et al.'s reference and
scikit-image) keeps only positions where the window fits: the two differ by up to ~0.003 on
28x28 images, and aexp's is 1.7-2x faster on the CPU."""
import warnings
from pathlib import Path

import torch
from torch import nn

from aexp.errors import ConfigError
from aexp.report import measures

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


# Wang et al. (2003)'s weights of the five scales; fewer scales use the first ones, renormalised.
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_scales(h: int, w: int, window: int = 11) -> int:
    """The most scales (up to 5) torchmetrics' MS-SSIM accepts for an h x w image with an 11x11
    window: 28x28 takes 2, 64x64 3, 128x128 4, 176x176 and larger all 5."""
    side = min(h, w)
    n = len(MS_SSIM_BETAS)
    while n > 1 and (side < 2 ** n or side // max(1, n - 1) ** 2 <= window - 1):
        n -= 1
    return n


def ms_ssim(pred: torch.Tensor, target: torch.Tensor, batch: int = 500) -> dict | None:
    """Mean MS-SSIM over images [N, C, H, W] in [0, 1], with the scales the size allows (None
    below two scales, where it would be SSIM again); torchmetrics' definition, computed by
    aexp.report.measures.ms_ssim."""
    n = ms_ssim_scales(*pred.shape[-2:])
    if n < 2:
        return None
    betas = tuple(b / sum(MS_SSIM_BETAS[:n]) for b in MS_SSIM_BETAS[:n])
    values = [measures.ms_ssim(pred[i:i + batch], target[i:i + batch], betas)
              for i in range(0, len(pred), batch)]
    return {"ms_ssim": torch.cat(values).mean().item(), "ms_ssim_scales": n}


def inception_fid(weights: str, real: torch.Tensor, fakes: dict, max_images: int, batch: int = 50) -> dict:
    """Inception FID (2048-d pool features, torch-fidelity's InceptionV3 as torchmetrics uses it)
    of each set in `fakes` against `real`, on at most `max_images` images each, from a local
    weights file. Grey images are repeated to three channels; torch-fidelity resizes to 299x299."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"eval.inception_weights: no such file {path}")
    try:   # a tensors-only file first: torch-fidelity then loads the same bytes with full pickle
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"eval.inception_weights: {path} is not a weights file ({type(e).__name__})") from None
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise ConfigError(f"eval.inception_weights: {path} is not an InceptionV3 state dict "
                          "(torch-fidelity's pt_inception-2015-12-05 weights)")
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        fid = FrechetInceptionDistance(feature=2048, normalize=True, reset_real_features=False,
                                       feature_extractor_weights_path=str(path))
    except ModuleNotFoundError as e:
        raise ConfigError(f"eval.inception_weights needs {e.name} (pip install -e '.[metrics]')") from None
    except RuntimeError as e:   # load_state_dict: keys or shapes of another network
        raise ConfigError(f"eval.inception_weights: {path} does not fit InceptionV3: {str(e)[:200]}") from None
    rgb = lambda t: t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t
    real = real[:max_images]
    out = {"images": len(real), "weights": str(path)}
    fid.to(real.device)
    for i in range(0, len(real), batch):
        fid.update(rgb(real[i:i + batch]), real=True)
    for name, fake in fakes.items():
        fid.reset()          # keeps the real features (reset_real_features=False below)
        fake = fake[:max_images]
        for i in range(0, len(fake), batch):
            fid.update(rgb(fake[i:i + batch]), real=False)
        out[name] = float(fid.compute())
    return out
