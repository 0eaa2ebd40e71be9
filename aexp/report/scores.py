"""The numbers that take a second network: the cached classifier's accuracy on originals,
predictions and the trivial baselines, FID/KID on its features (report/quality.py), and the
Inception FID from a local weights file. Part of `aexp eval` (report/evaluate.py)."""
import torch
from omegaconf import OmegaConf

from aexp import draw
from aexp.report import classifier, quality
from aexp.report.pictures import sample_codes


def views(run, pred, ev) -> tuple | None:
    """(test originals, test predictions, as many decoded samples as test images or None) as RGB-like
    images in [0, 1], what the classifier and the FIDs see; None where they mean nothing."""
    data = run.data
    if data.kind != "image":
        return None
    test_orig = data.to_rgb(pred["x"], pred["y"])
    test_pred = data.to_rgb(pred["x"], pred["x_hat"].clamp(0, 1))
    if test_orig.dim() != 4:
        return None
    samples = None
    if data.task.name == "reconstruct" and pred["sampler"]:   # none: a VQ code, an AE not asked
        codes = sample_codes(pred, len(pred["z"]), torch.Generator().manual_seed(int(ev.seed)), run.model)
        samples = data.to_rgb(None, draw.decode(run.model, codes, label=draw.every_class(run.model, len(codes))))
    return test_orig, test_pred, samples


class TrainViews:
    """The training split as the classifier sees it (RGB-like floats in [0, 1] on `device`),
    made per batch through the split's storage (aexp.data.storage): indexable like the tensor
    of all of them, which a dataset read from disk could not hold."""

    def __init__(self, data, device):
        self.data, self.device = data, torch.device(device)
        self.shape = (len(data.train), *self[torch.arange(1)].shape[1:])

    def __len__(self) -> int:
        return len(self.data.train)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        x, y = self.data.batch(self.data.train, idx.to(self.data.train.x.device))
        return self.data.to_rgb(x, y).float().to(self.device)


def classifier_accuracy(run, pred, ev, log, constants=None, seen=None) -> tuple[dict | None, dict | None]:
    """(the classifier's accuracy on originals, on predictions and (under "baseline") on each
    constant prediction of `constants`; the FID/KID section on its features when
    `eval.quality`), for labelled image data; (None, None) otherwise. `seen`: `views` of the
    run, when the caller has them already."""
    data, seen = run.data, seen or views(run, pred, ev)
    if seen is None or data.train.y is None or data.test.y is None or not data.num_classes:
        return None, None
    test_orig, test_pred, samples = seen
    train_view = TrainViews(data, run.device)
    ds_cfg = OmegaConf.to_container(run.cfg.dataset, resolve=True)
    view = data.task.name
    model, path, cached = classifier.get(ds_cfg, view, train_view, data.train.y.long(),
                                         data.num_classes, ev.classifier.cache_dir,
                                         int(ev.classifier.epochs), int(ev.seed), log)
    dev = run.device
    labels = pred["labels"].to(dev)
    acc = {"accuracy_original": classifier.accuracy(model, test_orig.to(dev), labels),
           "accuracy_reconstruction": classifier.accuracy(model, test_pred.to(dev), labels),
           "cache": str(path), "from_cache": cached, "baseline": {}}
    for name, c in (constants or {}).items():
        const = data.to_rgb(pred["x"], c.to(pred["y"].device).expand_as(pred["y"]))
        acc["baseline"][name] = classifier.accuracy(model, const.to(dev), labels)
    if not ev.get("quality", True):
        return acc, None
    samples = None if samples is None else samples.to(dev)
    return acc, quality.report(model, train_view, test_orig.to(dev), test_pred.to(dev), samples)


def inception(run, pred, ev, seen=None) -> dict | None:
    """`fid_inception` of reconstructions (and samples) against the test images, from the local
    weights file `eval.inception_weights` (None: not asked for, or not image data)."""
    if not ev.get("inception_weights"):
        return None
    seen = seen or views(run, pred, ev)
    if seen is None:
        return None
    if not quality.available():
        return {"skipped": "torchmetrics is not installed (pip install -e '.[metrics]')"}
    test_orig, test_pred, samples = (None if t is None else t.to(run.device) for t in seen)
    fakes = {"reconstruction": test_pred} if samples is None else {"reconstruction": test_pred, "samples": samples}
    return quality.inception_fid(ev.inception_weights, test_orig, fakes, int(ev.inception_max_images))
