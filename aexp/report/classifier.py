"""A small CNN classifier, trained once per dataset on the original training images and cached,
so every run on that dataset is judged by the same classifier: its test accuracy on the
originals against its accuracy on a model's reconstructions says how much class information
the reconstructions keep.

The cache file is named by a hash of the dataset config, the image view and the classifier's
settings (`eval.classifier.cache_dir`, default `$AEXP_CACHE/classifiers` or
`~/.cache/aexp/classifiers`)."""
import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aexp import checkpoint
from aexp.io import cache_root

VERSION = 3  # bump when the architecture or training changes, so old caches are not reused


def default_cache_dir() -> Path:
    return cache_root() / "classifiers"


class SmallCNN(nn.Module):
    """Three conv + BatchNorm + ReLU blocks (two max-pools), adaptive pooling to 4×4, two dense
    layers with dropout; takes any image of at least 4×4 pixels and any number of channels.
    On MNIST as 3×32×32 it reaches 0.994 test accuracy in 3 epochs."""

    def __init__(self, channels: int, num_classes: int, width: int = 32):
        super().__init__()

        def block(a, b):
            return [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]

        self.net = nn.Sequential(
            *block(channels, width), nn.MaxPool2d(2, ceil_mode=True),
            *block(width, 2 * width), nn.MaxPool2d(2, ceil_mode=True),
            *block(2 * width, 2 * width), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(0.3),
            nn.Linear(2 * width * 16, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.net(x)


def cache_key(dataset_cfg: dict, view: str, epochs: int, seed: int) -> str:
    blob = json.dumps({"dataset": dataset_cfg, "view": view, "epochs": epochs, "seed": seed,
                       "version": VERSION}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    """The share of `images` classified as `labels`. The same picture for every label (a constant
    prediction, the trivial baseline's) is classified once."""
    model.eval()
    if len(images) > 1 and bool((images == images[:1]).all()):
        return int((model(images[:1]).argmax(1) == labels).sum()) / len(images)
    correct = 0
    for i in range(0, len(images), batch):
        correct += int((model(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
    return correct / max(len(images), 1)


def fit(images: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int = 3,
        batch_size: int = 128, lr: float = 3e-3, seed: int = 0, log=None) -> SmallCNN:
    """Train a SmallCNN on float images [N, C, H, W] (a tensor, or anything indexed like one:
    report.scores.TrainViews, batched by index) with Adam under a one-cycle schedule peaking
    at `lr`."""
    torch.manual_seed(seed)
    model = SmallCNN(images.shape[1], num_classes).to(images.device)
    model = model.to(memory_format=torch.channels_last)   # faster convolutions, CPU and GPU
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(images)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(1, epochs * -(-n // batch_size)))
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen).to(images.device)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if log:
            log(f"classifier epoch {epoch + 1}/{epochs}  loss {loss.item():.4f}")
    return model.eval()


def get(dataset_cfg: dict, view: str, train_images, train_labels, num_classes: int,
        cache_dir=None, epochs: int = 2, seed: int = 0, log=None) -> tuple[SmallCNN, Path, bool]:
    """The cached classifier for this dataset and view, trained now if there is none.
    Returns (model in eval mode, cache file, whether it came from the cache)."""
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    name = str(dataset_cfg.get("_target_", "data")).rsplit(".", 1)[-1]
    path = folder / f"{name}-{view}-{cache_key(dataset_cfg, view, epochs, seed)}.pt"
    device = train_images.device
    if path.is_file():
        try:
            state = checkpoint.load(path)
            model = SmallCNN(state["channels"], state["num_classes"]).to(device)
            model.load_state_dict(state["model"])
            return model.eval(), path, True
        except Exception:     # a stale or damaged cache entry is retrained, not fatal
            pass
    if log:
        log(f"training the {name} classifier once ({len(train_images)} images, {epochs} epochs); "
            f"cached at {path}")
    t0 = time.perf_counter()
    model = fit(train_images, train_labels, num_classes, epochs=epochs, seed=seed, log=log)
    if log:
        log(f"{name} classifier trained in {time.perf_counter() - t0:.1f}s (later evaluations load it)")
    try:
        checkpoint.save(path, {"model": model.state_dict(), "channels": train_images.shape[1],
                               "num_classes": num_classes, "dataset": json.dumps(dataset_cfg, default=str)})
    except OSError:
        pass  # an unwritable cache only costs retraining next time
    return model, path, False
