"""Datasets of any size, for `make bench` (`--only storage`): on a generated folder of 64x64
JPEGs, in one run, side by side:

- decoding it with 1 worker vs every usable core (the first decode of an image folder);
- training `model=conv` on it with `dataset.storage=device`, `host` and `disk` (A B C A B C,
  median samples/s of epochs 2.., the cache file already in the page cache);
- the peak anonymous memory (RssAnon, polled from outside) of a `storage=disk` run on that
  folder and on one four times larger, and of a `storage=device` run on the larger one.

Every training run goes through the real entry point in its own process."""
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from aexp.data import image_folder
from aexp.data.decode import usable_cores
from aexp.io import read_csv
from field import launch

ROOT = Path(__file__).resolve().parent.parent
MODES = ("device", "host", "disk")


def make_jpegs(folder: Path, n: int, size: int = 64, copies: int = 1) -> Path:
    """`n` smooth random 64x64 JPEGs (photo-like: upsampled 8x8 noise), in 10 class folders;
    with `copies` > 1 every file also appears that many times under other names (hard links:
    the same bytes to decode, `copies` times the dataset)."""
    rng = np.random.default_rng(0)
    for c in range(10):
        (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        path = folder / f"c{i % 10}" / f"{i:06d}.jpg"
        small.resize((size, size), Image.BILINEAR).save(path, quality=90)
        for k in range(1, copies):
            os.link(path, path.with_name(f"{i:06d}_{k}.jpg"))
    return folder


def decode_rows(folder: Path, rounds: int) -> dict:
    """Seconds to decode `folder` from scratch with 1 worker and with all usable cores."""
    times = {1: [], usable_cores(): []}
    for _ in range(rounds):
        for workers in times:
            with tempfile.TemporaryDirectory() as cache:
                t0 = time.perf_counter()
                image_folder(str(folder), size=64, cache_dir=cache, workers=workers)
                times[workers].append(time.perf_counter() - t0)
    one, many = (statistics.median(v) for v in times.values())
    return {"images": sum(1 for _ in folder.rglob("*.jpg")), "workers": list(times),
            "seconds_1": one, "seconds_all": many, "speedup": one / many, "all_runs": times}


def train_args(folder: Path, cache: Path, mode: str, epochs: int, run: Path, *extra) -> list:
    return ["train", "dataset=image_folder", f"dataset.root={folder}", "dataset.size=64",
            f"dataset.cache_dir={cache}", f"dataset.storage={mode}", "model=conv", "loss=bce",
            f"train.epochs={epochs}", "train.batch_size=128", "frames.enabled=false",
            "eval.enabled=false", "device=cpu", "train.precision=fp32",   # as the figures before auto's CPU rule
            f"hydra.run.dir={run}", *extra]


def throughput_rows(folder: Path, images: int, cache: Path, epochs: int, rounds: int, work: Path) -> dict:
    """Median samples/s of epochs 2.. per storage mode, the modes interleaved round by round."""
    rates = {m: [] for m in MODES}
    for r in range(rounds):
        for mode in MODES:
            run = work / f"{mode}-{r}"
            launch(train_args(folder, cache, mode, epochs, run))
            rows = read_csv(run / "metrics.csv")
            n = images - 2 * round(images * 0.1)       # the default 10 % validation, 10 % test
            rates[mode].append(statistics.median(n / row["train_seconds"] for row in rows[1:]))
            shutil.rmtree(run)
    med = {m: statistics.median(v) for m, v in rates.items()}
    return {"samples_per_s": med, "runs": rates,
            "host_vs_device": med["host"] / med["device"], "disk_vs_device": med["disk"] / med["device"]}


def memory_rows(small: Path, large: Path, cache: Path, steps: int, work: Path) -> dict:
    """Peak RssAnon of short training runs: disk on both folders, device on the large one."""
    out = {}
    for name, folder, mode in (("disk, 1x", small, "disk"), ("disk, 4x", large, "disk"),
                               ("device, 4x", large, "device")):
        _, peak = launch(train_args(folder, cache, mode, 1, work / name.replace(", ", "-"),
                                      f"train.max_steps={steps}"), poll=True)
        out[name] = {"images": sum(1 for _ in folder.rglob("*.jpg")), "peak_rss_anon_mb": peak / 2**20}
    out["disk_growth_mb"] = out["disk, 4x"]["peak_rss_anon_mb"] - out["disk, 1x"]["peak_rss_anon_mb"]
    return out


def storage_bench(images: int = 20000, epochs: int = 3, rounds: int = 2, steps: int = 60) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = make_jpegs(tmp / "jpegs", images)
        large = make_jpegs(tmp / "jpegs4x", images, copies=4)
        cache = tmp / "cache"
        report = {"decode": decode_rows(small, rounds)}
        print("decode", report["decode"], flush=True)
        for folder in (small, large):       # decoded once: the training rows start from the cache
            image_folder(str(folder), size=64, cache_dir=str(cache))
        report["throughput"] = throughput_rows(small, images, cache, epochs, rounds, tmp / "runs")
        print("throughput", report["throughput"], flush=True)
        report["memory"] = memory_rows(small, large, cache, steps, tmp / "mem")
        print("memory", report["memory"], flush=True)
    return report


def markdown(r: dict) -> list[str]:
    d, t, m = r["decode"], r["throughput"], r["memory"]
    lines = ["", f"Decoding {d['images']:,} 64×64 JPEGs (first run, no cache): 1 worker {d['seconds_1']:.1f} s, "
             f"{d['workers'][1]} workers {d['seconds_all']:.1f} s = {d['speedup']:.2f}×", "",
             "| `model=conv` on the JPEG folder (CPU) | samples/s | vs device |", "| --- | ---: | ---: |"]
    for mode in MODES:
        rate = t["samples_per_s"][mode]
        lines.append(f"| `storage={mode}` | {rate:,.0f} | {rate / t['samples_per_s']['device']:.2f}× |")
    lines += ["", "| peak RssAnon of a short run | images | MB |", "| --- | ---: | ---: |"]
    for name in ("disk, 1x", "disk, 4x", "device, 4x"):
        lines.append(f"| `storage={name.split(',')[0]}` | {m[name]['images']:,} | {m[name]['peak_rss_anon_mb']:,.0f} |")
    lines.append(f"\n`storage=disk`, 4× the images: peak RssAnon {m['disk_growth_mb']:+.0f} MB")
    return lines
