"""Same-model parity, for `make bench`: aexp's `train()` against the hand-written loops of
benchmarks/peer_loops.py on the same model, data, batch size and threads, alternating A B A B
in one process (medians, and the ratio of each adjacent pair, so a slow spell of a shared
machine lands on both sides).

- the published 32x32 baseline (`model=baseline32 model.channels=[12,24] model.grid=[16,8]
  model.head=false`, MSE, Adam 1e-3, batch 128) on MNIST-shaped 3x32x32 images;
- pytorch/examples' VAE (784-400-20, BCE + KL summed, Adam 1e-3, batch 128) on MNIST, against
  its model and loss in a resident-tensor loop and in its own DataLoader + ToTensor loop.

Both loops train for whole epochs of the same number of samples; the first epoch of each
measurement is a warm-up and is not counted."""
import statistics
import tempfile
from pathlib import Path

import torch

import peer_loops
from aexp.data import mnist
from aexp.data.storage import resident
from aexp.io import read_csv
from aexp.run.train import train

BATCH = 128
PUBLISHED = ["model=baseline32", "model.channels=[12,24]", "model.grid=[16,8]", "model.head=false",
             "loss=mse", "loss.reduction=mean", "optimizer=adam", "optimizer.lr=1e-3", "schedule=none",
             "dataset=mnist32"]
EXAMPLES_VAE = ["model=vae", "model.hidden=[400]", "model.latent_dim=20", "loss=vae", "optimizer=adam",
                "optimizer.lr=1e-3", "schedule=none", "dataset=mnist"]


def aexp_rate(compose, overrides, root, epochs: int, device, batch: int = BATCH) -> float:
    """Median training samples/s of aexp's train() over epochs 2.. (frames and eval off)."""
    cfg = compose([*overrides, f"dataset.root={root}", f"train.epochs={epochs}", f"train.batch_size={batch}",
                   "frames.enabled=false", "eval.enabled=false", f"device={device}"])
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp))
        rows = read_csv(Path(tmp) / "metrics.csv")
    n = _train_images(root) - int(cfg.dataset.val_size)
    rates = [n / r["train_seconds"] for r in rows[1:]] or [n / rows[0]["train_seconds"]]
    return statistics.median(rates)


def _train_images(root) -> int:
    """MNIST training images in `root` (validation included)."""
    data = mnist(root=str(root), val_size=1, download=False)
    return len(data.train) + len(data.val)


def _images(root, size: int | None, val_size: int) -> torch.Tensor:
    """The training images aexp trains on (uint8, the validation carve-out removed), for the peers."""
    data = mnist(root=str(root), val_size=val_size, download=False)
    x = resident(data.train.x)     # (a Stored view until placed: aexp.data.storage)
    if size:
        x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear",
                                            align_corners=False).round().clamp(0, 255).to(torch.uint8)
        x = x.expand(-1, 3, -1, -1).contiguous()
    return x


def _dataloader_vae(root, epochs: int, device) -> float:
    """pytorch/examples' VAE loop as written there: ToTensor DataLoader, per-batch .item()."""
    torch.manual_seed(0)
    model = peer_loops.ExamplesVAE().to(device)
    return peer_loops.dataloader_loop(model, peer_loops.examples_vae_step, root, epochs, BATCH, device)


def parity(compose, root, published_root, rounds: int, epochs: int, device) -> dict:
    """{row: {aexp, peer samples/s medians, pair ratios}} for the two models, A B A B."""
    dev = torch.device(device)
    out = {}
    cases = {
        "published 32x32 baseline": (PUBLISHED, published_root, lambda: peer_loops.published_baseline32(
            _images(published_root, 32, 5000), BATCH, epochs, _steps(published_root), dev)),
        "pytorch/examples VAE, resident loop": (EXAMPLES_VAE, root, lambda: peer_loops.examples_vae(
            _images(root, None, 5000), BATCH, epochs, _steps(root), dev)),
        "pytorch/examples VAE, its DataLoader loop": (EXAMPLES_VAE, root,
                                                      lambda: _dataloader_vae(root, epochs, dev)),
    }
    for name, (overrides, data_root, peer) in cases.items():
        a, p = [], []
        for _ in range(rounds):
            a.append(aexp_rate(compose, overrides, data_root, epochs, device))
            p.append(peer())
        out[name] = {"aexp_samples_per_s": statistics.median(a), "peer_samples_per_s": statistics.median(p),
                     "pair_ratios": [x / y for x, y in zip(a, p)]}
        print(name, out[name], flush=True)
    return out


def _steps(root) -> int:
    """Full batches in aexp's training split (aexp's epoch keeps a last partial batch: a few %)."""
    return (_train_images(root) - 5000) // BATCH


def markdown(rows: dict) -> list[str]:
    lines = ["", f"Same model, same data, batch {BATCH}, alternating aexp / hand-written loop (A B A B):", "",
             "| model | aexp samples/s | hand-written samples/s | aexp / hand-written, each pair |",
             "| --- | ---: | ---: | --- |"]
    for name, v in rows.items():
        pairs = ", ".join(f"{r:.2f}×" for r in v["pair_ratios"])
        lines.append(f"| {name} | {v['aexp_samples_per_s']:,.0f} | {v['peer_samples_per_s']:,.0f} | {pairs} |")
    return lines
