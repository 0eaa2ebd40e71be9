"""`make bench-gpu`: aexp's training loop on one GPU, in one command (aimed at under 8 minutes).

For the dense VAE 784-400-20 (MNIST-shaped, batch 128), the published 32x32 baseline (3x32x32,
batch 128) and the pooling CNN colouriser (128x128, batch 16): samples/s (median of epochs 2..),
epoch seconds and peak GPU memory, for fp32 and bf16 autocast, with `train.compile` off and on.
Data is resident on the GPU (aexp's default path). Two checks of the loop itself:
- no host sync per step: one short run under `torch.cuda.set_sync_debug_mode("error")`, which
  raises at the first operation that waits for the GPU (the loop reads its loss sums once per
  epoch; that read is outside the steps);
- launch overhead: the default colours run (17 parameters, so its step is nearly all kernel
  launches) in ms per step, eager and with `train.compile`.
The pytorch/examples VAE in its own DataLoader loop runs beside the dense VAE for the "x faster
than the examples loop" figure. Writes outputs/bench_gpu/bench_gpu.{json,md}.

With `--device cpu --smoke` it runs every row for a step or two on the CPU: a check that the
script works, not a measurement (the tests run it that way)."""
import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import compose, synthetic_mnist  # noqa: E402
from parity import EXAMPLES_VAE, PUBLISHED, _dataloader_vae  # noqa: E402

from aexp.io import read_csv  # noqa: E402
from aexp.run.train import train  # noqa: E402

MODELS = {   # name -> (overrides, which data, batch)
    "dense VAE 784-400-20": (EXAMPLES_VAE, "mnist", 128),
    "published 32x32 baseline": (PUBLISHED, "mnist", 128),
    "pooling CNN 128x128 (colourisation)": (["+experiment=colorize_daisy", "model.pooling=2"], "photos", 16),
}


def photos(root: Path, n: int) -> Path:
    """A folder of `n` random 128x128 JPEGs standing in for the daisies (speed only)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(root / f"{i:04d}.jpg")
    return root


def run(overrides, data: dict, kind: str, batch: int, epochs: int, device: str, extra=()) -> dict:
    """One aexp training run: median samples/s of epochs 2.., median epoch s, peak memory."""
    root = data[kind]
    data_args = ([f"dataset.root={root}"] if kind == "mnist" else
                 [f"dataset.root={root}", "train.max_steps=null", f"train.epochs={epochs}"])
    cfg = compose([*overrides, *data_args, f"train.epochs={epochs}", f"train.batch_size={batch}",
                   "frames.enabled=false", "eval.enabled=false", f"device={device}", *extra])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp))
        rows = read_csv(Path(tmp) / "metrics.csv")
    n = data[f"{kind}_train"]
    timed = rows[1:] or rows
    return {"samples_per_s": statistics.median(n / r["train_seconds"] for r in timed),
            "epoch_s": statistics.median(r["seconds"] for r in timed),
            "peak_memory_mb": (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None)}


def no_sync_per_step(data: dict, device: str, steps: int = 50) -> dict:
    """A `steps`-step dense VAE run with torch's sync debug mode at "warn": every operation that
    waits for the GPU warns. Setup, the end-of-epoch read of the loss sums and the checkpoint
    sync a few times per run; a sync in every step would warn at least `steps` times."""
    if not device.startswith("cuda"):
        return {"skipped": "CPU: nothing to synchronise"}
    cfg = compose([*EXAMPLES_VAE, f"dataset.root={data['mnist']}", "train.epochs=1", f"train.max_steps={steps}",
                   "frames.enabled=false", "eval.enabled=false", f"device={device}"])
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught, tempfile.TemporaryDirectory() as tmp:
            warnings.simplefilter("always")
            train(cfg, Path(tmp))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    seen = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    return {"steps": steps, "sync_warnings": len(seen), "per_step_sync": len(seen) >= steps, "first": seen[:3]}


def launch_overhead(device: str, steps: int) -> dict:
    """The default colours run (a 17-parameter model: its step is all launch overhead) in time
    per step, eager and compiled."""
    out = {}
    for name, extra in (("eager", []), ("compiled", ["train.compile=true"])):
        # epoch 1 (compilation, warm-up) and epoch 2 (timed) of `steps` steps of batch 64 each
        cfg = compose([f"dataset.n_train={64 * steps}", "train.batch_size=64", "train.epochs=2",
                       "frames.enabled=false", "eval.enabled=false", f"device={device}", *extra])
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            train(cfg, Path(tmp))
            rows = read_csv(Path(tmp) / "metrics.csv")
        out[name] = {"ms_per_step": 1000 * rows[-1]["train_seconds"] / steps,
                     "total_s": time.perf_counter() - t0}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench_gpu.py", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is warm-up)")
    ap.add_argument("--smoke", action="store_true", help="a step or two per row: checks the script, measures nothing")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_gpu"))
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench-gpu: no CUDA device here; run it where a GPU is (or --device cpu --smoke to check the script)")
        return 2
    tmp = tempfile.TemporaryDirectory()
    small = args.smoke
    n_mnist, n_photos = (5200, 40) if small else (60000, 1000)
    mnist_root = synthetic_mnist(Path(tmp.name) / "mnist", n_train=n_mnist, n_test=200)
    data = {"mnist": mnist_root, "mnist_train": n_mnist - 5000,
            "photos": photos(Path(tmp.name) / "photos", n_photos)}
    # colorize_daisy's split (aexp/data/folder.py): 25 % test, 5 % validation, rounded
    data["photos_train"] = n_photos - round(n_photos * 0.25) - round(n_photos * 0.05)
    epochs = 2 if small else args.epochs
    variants = [("fp32", ["train.precision=fp32"]), ("bf16", ["train.precision=bf16"])]
    compiles = [("eager", []), ("compiled", ["train.compile=true"])]
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu (smoke)",
              "torch": torch.__version__, "smoke": small, "models": {}}
    t_start = time.perf_counter()
    for name, (overrides, kind, batch) in MODELS.items():
        for p_name, p in variants:
            for c_name, c in compiles:
                if small and (p_name, c_name) != ("fp32", "eager"):
                    continue
                key = f"{name} · {p_name} · {c_name}"
                extra = [*p, *c] + (["train.max_steps=2"] if small else [])
                report["models"][key] = run(overrides, data, kind, batch, epochs, args.device, extra)
                print(key, report["models"][key], flush=True)
    if not small:
        report["examples_vae_dataloader_samples_per_s"] = _dataloader_vae(mnist_root, 2, torch.device(args.device))
    report["no_sync_per_step"] = no_sync_per_step(data, args.device)
    report["launch_overhead"] = launch_overhead(args.device, 2 if small else 200)
    report["wall_s"] = time.perf_counter() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_gpu.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "bench_gpu.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(r) -> str:
    lines = [f"Device: {r['device']} · torch {r['torch']}" + (" · SMOKE RUN, not a measurement" if r["smoke"] else ""),
             "", "| model · precision · compile | samples/s | epoch s | peak memory MB |", "| --- | ---: | ---: | ---: |"]
    for key, v in r["models"].items():
        mem = "–" if v["peak_memory_mb"] is None else f"{v['peak_memory_mb']:,.0f}"
        lines.append(f"| {key} | {v['samples_per_s']:,.0f} | {v['epoch_s']:.3f} | {mem} |")
    if "examples_vae_dataloader_samples_per_s" in r:
        lines.append(f"\npytorch/examples VAE in its DataLoader loop: {r['examples_vae_dataloader_samples_per_s']:,.0f} samples/s")
    lines.append(f"\nHost syncs inside steps: {r['no_sync_per_step']}")
    for name, v in r["launch_overhead"].items():
        lines.append(f"Tiny model (default colours run), {name}: {v['ms_per_step']:.3f} ms per step")
    lines.append(f"\nWall time: {r['wall_s']:.0f} s")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
