"""`make bench`: aexp's training loop measured side by side with a conventional one.

In one run, on one machine: aexp's training throughput for the dense AE, the conv AE and the VAE
on MNIST-shaped data; the same models trained the way tutorials write it (torchvision MNIST with
ToTensor, a DataLoader, a per-batch `.item()`); the fraction of measured matmul peak that the
dense AE's step reaches; conv training steps with NCHW vs channels_last weights; the per-epoch
cost of frames + metrics; `aexp render` time per frame; and speed in the field (benchmarks/field.py):
the default run beside a busy process with `train.threads=auto` vs torch's default, and a 4-job
joblib sweep on 2 cores vs the jobs one after another; and datasets of any size
(benchmarks/data_storage.py): a JPEG folder's decode on 1 core vs all, `model=conv` trained from
device, host and disk storage, and the disk path's peak memory at 1x and 4x the images.
Writes `outputs/bench/bench.json` and `outputs/bench/bench.md`.
"""
# the in-process rows run as `aexp train` does: OpenMP waits sleep where the cores are busy as it
# starts, else spin (aexp.cli.openmp_waits, before torch loads; aexp.cli does not import torch)
from aexp.cli import openmp_waits
openmp_waits()
import argparse  # noqa: E402
import json
import platform
import statistics
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from aexp.assemble import build, conf_dir, resolve_device
from aexp.data import mnist
from aexp.io import read_csv
from aexp.models import layout
from aexp.report.render import render
from aexp.run.threads import wait_mode
from aexp.run.train import train
from data_storage import markdown as storage_markdown, storage_bench
from field import busy_machine, markdown as field_markdown, sweep_on_two_cores
import precision
import peer_loops
from parity import aexp_rate, markdown as parity_markdown, parity

MODELS = {  # bench name -> aexp config overrides (model and loss as a user would pick them)
    "dense AE": ["model=mlp", "loss=bce"],
    "conv AE": ["model=conv", "loss=bce"],
    "VAE": ["model=vae"],
}


# --quick: the defaults that make the whole bench fit in about 15 minutes on 2 quiet cores
QUICK = {"epochs": 2, "parity_rounds": 1, "storage_images": 5000, "busy_epochs": 4, "sweep_epochs": 8,
         "precision_steps": 10}

# aexp's runs in this process use the threads the conventional loop gets: --threads, else
# torch's default (train.threads=auto has rows of its own, benchmarks/field.py)
THREADS = ["train.threads=null"]


# main() makes aexp's runs here train in fp32 unless a row says otherwise (a later override wins),
# as the loops they are compared with do: `auto` would pick bf16 on an AMX-BF16 CPU (--only
# precision has those rows). bench_gpu.py, which imports compose, keeps auto.
PRECISION = []


def compose(overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[*PRECISION, *overrides, *THREADS])


def synthetic_mnist(root: Path, n_train=60000, n_test=10000) -> Path:
    """MNIST-shaped IDX files of random strokes (when no real MNIST is given)."""
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = (rng.random((n, 28, 28)) > 0.8).astype(np.uint8) * 255
        y = rng.integers(0, 10, n).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">HBB3I", 0, 8, 3, n, 28, 28) + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">HBBI", 0, 8, 1, n) + y.tobytes())
    return root


def aexp_throughput(overrides, root, epochs, batch_size, device) -> dict:
    """Median training samples/s of aexp's own loop (train() itself, frames off) on MNIST: the
    parity rows' measurement (benchmarks/parity.py) at this bench's batch size."""
    rate = aexp_rate(compose, [*overrides, "dataset=mnist"], root, epochs, device, batch_size)
    return {"samples_per_s": rate, "epochs": epochs}


def conventional_throughput(overrides, root, epochs, batch_size, device) -> dict:
    """The same model and loss trained the tutorials' way: ToTensor + DataLoader + per-batch
    .item(), with a plain `torch.optim.Adam` (aexp's config uses the fused one)."""
    cfg = compose([*overrides, "dataset=mnist", f"dataset.root={root}"])
    dev = resolve_device(device)
    torch.manual_seed(0)
    model = build(cfg.model, in_shape=(1, 28, 28), out_shape=(1, 28, 28)).to(dev)
    loss_fn = build(cfg.loss)   # the same maths as aexp's (its code is aexp's own)
    rate = peer_loops.dataloader_loop(model, lambda m, x: loss_fn(m(x), x, x, m)["loss"], root, epochs,
                                      batch_size, dev, lr=cfg.optimizer.lr)   # plain Adam, as tutorials
    return {"samples_per_s": rate, "epochs": epochs}


def matmul_peak(device, n=2048, reps=10) -> float:
    """Best measured float32 matmul FLOP/s for an n x n product."""
    dev = torch.device(device)
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    best = float("inf")
    for _ in range(reps):
        _sync(dev)
        t0 = time.perf_counter()
        a @ b
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def dense_step_flops(model, batch) -> float:
    """Matmul FLOPs of one training step of a dense model: forward 2·B·in·out per layer;
    backward the same for the weight gradient and, except for the first layer, the input one."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    total = 0
    for i, m in enumerate(linears):
        mac = batch * m.in_features * m.out_features
        total += 2 * mac * (2 if i == 0 else 3)
    return float(total)


def dense_step_fraction(root, batch_size, device) -> dict:
    """FLOP/s of the dense AE's training step (resident batch, median of many steps) over peak."""
    cfg = compose(["model=mlp", "loss=bce"])
    dev = resolve_device(device)
    model = build(cfg.model, in_shape=(1, 28, 28), out_shape=(1, 28, 28)).to(dev)
    loss_fn, opt = build(cfg.loss), build(cfg.optimizer, params=model.parameters())
    x = mnist(str(root)).train.x[:batch_size].to(dev).float() / 255
    times = []
    for i in range(60):
        dt = _timed_step(dev, opt, lambda: loss_fn(model(x), x, x, model)["loss"])
        if i >= 10:
            times.append(dt)
    step = statistics.median(times)
    flops = dense_step_flops(model, batch_size)
    peak = matmul_peak(device)
    return {"step_ms": step * 1e3, "step_gflops": flops / step / 1e9, "peak_gflops": peak / 1e9,
            "fraction_of_peak": flops / step / peak}


def frame_overhead(root, device) -> dict:
    """Frame + metrics-row cost as a share of an epoch, for the default colours run and an MNIST MLP."""
    out = {}
    for name, overrides in {"colors linear": [], "mnist mlp": ["model=mlp", "loss=bce", "dataset=mnist",
                                                                 f"dataset.root={root}"]}.items():
        cfg = compose([*overrides, "train.epochs=3", "eval.enabled=false", f"device={device}"])
        with tempfile.TemporaryDirectory() as tmp:
            train(cfg, Path(tmp))
            rows = read_csv(Path(tmp) / "metrics.csv")
        frac = [r["frame_seconds"] / r["seconds"] for r in rows]
        out[name] = {"overhead_pct": 100 * statistics.median(frac),
                     "epoch_s": statistics.median(r["seconds"] for r in rows)}
    return out


def render_per_frame(device) -> dict:
    cfg = compose(["train.epochs=30", "dataset.n_train=1000", "eval.enabled=false", f"device={device}"])
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp))
        t0 = time.perf_counter()
        render(Path(tmp))
        dt = time.perf_counter() - t0
    return {"ms_per_frame": dt / 31 * 1e3, "frames": 31}


LAYOUT_MODELS = {  # bench name -> (model overrides, input shape): conv models for train.channels_last
    "conv AE 1x28x28": (["model=conv"], (1, 28, 28)),
    "baseline32 3x32x32": (["model=baseline32"], (3, 32, 32)),
    "published 32x32 baseline": (["model=baseline32", "model.channels=[12,24]", "model.grid=[16,8]",
                                  "model.head=false"], (3, 32, 32)),
}


def layout_speedup(device, batch=128, steps=8) -> dict:
    """Training-step time of conv models with NCHW weights vs channels_last (NHWC, as training
    stores it: aexp.models.layout), same weights and random data, the two layouts measured
    alternately in one process."""
    dev = torch.device(device)
    out = {}
    for name, (overrides, shape) in LAYOUT_MODELS.items():
        cfg = compose(overrides)
        x = torch.rand(batch, *shape, device=dev)
        nets = {}
        for fmt in (torch.contiguous_format, torch.channels_last):
            torch.manual_seed(0)
            net = build(cfg.model, in_shape=shape, out_shape=shape).to(dev)
            net = layout.channels_last(net) if fmt == torch.channels_last else net
            nets[fmt] = (net, torch.optim.Adam(net.parameters(), 1e-3))
        times = {fmt: [] for fmt in nets}
        for i in range(steps + 2):
            for fmt, (net, opt) in nets.items():
                dt = _timed_step(dev, opt, lambda: ((net(x).x_hat - x) ** 2).mean())
                if i >= 2:     # the first two steps warm up
                    times[fmt].append(dt)
        nchw, nhwc = (statistics.median(times[k]) for k in nets)
        out[name] = {"nchw_ms": nchw * 1e3, "channels_last_ms": nhwc * 1e3, "speedup": nchw / nhwc}
    return out


def _timed_step(dev, opt, loss_of) -> float:
    """Seconds of one optimiser step on `loss_of()` (forward, backward, update), device-synced."""
    _sync(dev)
    t0 = time.perf_counter()
    loss = loss_of()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    _sync(dev)
    return time.perf_counter() - t0


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.splitlines()[0])
    ap.add_argument("--root", help="folder holding MNIST/raw (default: synthetic MNIST-shaped data)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per measurement (first is warm-up)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    ap.add_argument("--out", type=Path, default=Path("outputs/bench"))
    ap.add_argument("--threads", type=int, help="torch CPU threads for every measurement (default: torch's)")
    ap.add_argument("--busy-epochs", type=int, default=8, help="epochs of each busy-machine run")
    ap.add_argument("--sweep-epochs", type=int, default=20, help="epochs of each job of the 4-job sweep")
    ap.add_argument("--parity-rounds", type=int, default=2, help="A B pairs per same-model parity row")
    ap.add_argument("--storage-images", type=int, default=20000,
                    help="JPEGs in the generated folder of the storage rows (their 4x is the large one)")
    ap.add_argument("--precision-steps", type=int, default=20, help="timed steps per model, fp32 vs bf16")
    ap.add_argument("--quick", action="store_true", help="every row, shorter (what `make bench` runs: about 15 "
                    "minutes on 2 quiet cores): the defaults above become " + str(QUICK))
    ap.add_argument("--only", help="comma-separated rows to run: models, dense_step, channels_last, frames, "
                                   "render, busy, sweep, parity, storage, precision, compile (default: all)")
    args = ap.parse_args(argv)
    PRECISION[:] = ["train.precision=fp32"]
    for key, value in QUICK.items() if args.quick else ():
        if getattr(args, key) == ap.get_default(key):   # a value given on the command line wins
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
        THREADS[:] = [f"train.threads={args.threads}"]
    device = str(resolve_device(args.device))
    tmp = tempfile.TemporaryDirectory()
    root = Path(args.root) if args.root else synthetic_mnist(Path(tmp.name))
    available = {p.stem for p in (conf_dir() / "model").glob("*.yaml")}
    rows = set(args.only.split(",")) if args.only else None
    want = lambda name: rows is None or name in rows
    report = {"machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                          "openmp_waits": wait_mode(),
                          "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
                          "torch": torch.__version__},
              "data": "real MNIST" if args.root else "synthetic MNIST-shaped", "batch_size": args.batch_size,
              "models": {}}
    for name in args.models.split(",") if want("models") else []:
        overrides = MODELS[name]
        if overrides[0].split("=")[1] not in available:
            report["models"][name] = {"skipped": f"no {overrides[0]} config"}
            continue
        a, c = [], []
        for _ in range(args.parity_rounds):   # A B A B: a slow spell of the machine hits both
            a.append(aexp_throughput(overrides, root, args.epochs, args.batch_size, device)["samples_per_s"])
            c.append(conventional_throughput(overrides, root, args.epochs, args.batch_size, device)["samples_per_s"])
        report["models"][name] = {"aexp_samples_per_s": statistics.median(a),
                                  "conventional_samples_per_s": statistics.median(c),
                                  "ratio": statistics.median(a) / statistics.median(c),
                                  "pair_ratios": [x / y for x, y in zip(a, c)]}
        print(name, report["models"][name], flush=True)
    steps = {"dense_step": lambda: dense_step_fraction(root, args.batch_size, device),
             "channels_last": lambda: layout_speedup(device),
             "frames": lambda: frame_overhead(root, device),
             "render": lambda: render_per_frame(device),
             "parity": lambda: parity(compose, root, synthetic_mnist(Path(tmp.name) / "small", n_train=10120,
                                                                     n_test=100),
                                      args.parity_rounds, args.epochs, device),
             "busy": lambda: busy_machine(args.busy_epochs),
             "sweep": lambda: sweep_on_two_cores(args.sweep_epochs),
             "storage": lambda: storage_bench(args.storage_images, args.epochs, args.parity_rounds),
             "precision": lambda: precision.precision_rows(compose, args.precision_steps),
             "compile": lambda: precision.compile_rows(compose, args.precision_steps)}
    for name, measure in steps.items():
        if want(name):
            report[name] = measure()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    (args.out / "bench.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(r) -> str:
    m = r["machine"]
    lines = [f"Machine: {m['device']} · {m['cpu_threads']} CPU threads (OpenMP waits "
             f"{m.get('openmp_waits', 'sleep')}) · torch {m['torch']} · "
             f"{r['data']} · batch {r['batch_size']}", ""]
    if r["models"]:
        lines += ["| model | aexp samples/s | conventional samples/s | ratio (each A B pair) |",
                  "| --- | ---: | ---: | ---: |"]
    for name, v in r["models"].items():
        if "skipped" in v:
            lines.append(f"| {name} | – | – | skipped ({v['skipped']}) |")
        else:
            pairs = ", ".join(f"{x:.2f}×" for x in v["pair_ratios"])
            lines.append(f"| {name} | {v['aexp_samples_per_s']:,.0f} | {v['conventional_samples_per_s']:,.0f} "
                         f"| {v['ratio']:.2f}× ({pairs}) |")
    if "dense_step" in r:
        d = r["dense_step"]
        lines += ["", f"Dense AE step (batch {r['batch_size']}): {d['step_ms']:.2f} ms, {d['step_gflops']:.1f} "
                  f"GFLOP/s = {100 * d['fraction_of_peak']:.0f}% of measured matmul peak "
                  f"({d['peak_gflops']:.1f} GFLOP/s)", ""]
    for name, v in r.get("channels_last", {}).items():
        lines.append(f"Training step (batch 128), {name}: NCHW {v['nchw_ms']:.1f} ms, channels_last "
                     f"{v['channels_last_ms']:.1f} ms = {v['speedup']:.2f}×")
    lines.append("")
    for name, v in r.get("frames", {}).items():
        lines.append(f"Frames + metrics overhead, {name}: {v['overhead_pct']:.1f}% of a {v['epoch_s']:.2f} s epoch")
    if "render" in r:
        lines.append(f"\n`aexp render`: {r['render']['ms_per_frame']:.1f} ms per frame")
    if "parity" in r:
        lines += parity_markdown(r["parity"])
    if "busy" in r and "sweep" in r:
        lines += field_markdown(r["busy"], r["sweep"])
    if "storage" in r:
        lines += storage_markdown(r["storage"])
    lines += precision.markdown(r.get("precision"), r.get("compile"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
