"""`aexp lr-find [overrides]`: the learning-rate range test (Smith 2017). Builds the run exactly
as `aexp train` would (same config, same overrides), then trains for `lr_find.steps` batches
while the learning rate grows exponentially from `lr_find.start` to `lr_find.end`, stopping early
once the loss explodes. Writes `lr_find.csv` and `lr_find.png` (loss vs lr, log scale) into the
run folder and prints the suggested learning rate: the steepest descent of the smoothed loss.
The model's weights are thrown away; nothing is checkpointed."""
import csv
import math
from pathlib import Path

import numpy as np
import torch

from aexp.assemble import build, build_parts, check_config, resolve_device, seed_everything
from aexp.errors import ConfigError
from aexp.models import call
from aexp.run import steps as st, threads
from aexp.run.train import console


def suggest(lrs, smoothed) -> float:
    """The lr where the smoothed loss falls fastest (most negative slope against log lr), looked
    for before the loss minimum, where the curve is still informative."""
    lrs, smoothed = np.asarray(lrs), np.asarray(smoothed)
    stop = int(np.argmin(smoothed)) + 1
    if stop < 3:
        return float(lrs[0])
    slope = np.gradient(smoothed[:stop], np.log(lrs[:stop]))
    return float(lrs[int(np.argmin(slope))])


def plot(path: Path, lrs, losses, smoothed, best_lr: float) -> None:
    import matplotlib   # imported here: `aexp train` never needs it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(lrs, losses, color="0.75", lw=1, label="batch loss")
    ax.plot(lrs, smoothed, color="C0", lw=2, label="smoothed")
    ax.axvline(best_lr, color="C3", ls="--", label=f"suggested {best_lr:.2g}")
    ax.set_xscale("log")
    lo, hi = min(np.nanmin(losses), np.nanmin(smoothed)), np.nanpercentile(smoothed, 95)
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.1 * (hi - lo) + 1e-12)
    ax.set(xlabel="learning rate", ylabel="training loss", title="learning-rate range test")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def lr_find(cfg, run_dir: Path, job_num=None, overrides=None) -> float:
    run_dir = Path(run_dir)
    check_config(cfg)   # lr_find.start < end and steps >= 10 among the rest
    opts = cfg.get("lr_find", {})
    lrs = np.geomspace(opts.get("start", 1e-7), opts.get("end", 10.0), opts.get("steps", 200))
    stop_factor, beta = opts.get("stop_factor", 4.0), opts.get("smoothing", 0.9)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    data, model, loss_fn = build_parts(cfg, device)
    optimizer = build(cfg.optimizer, params=model.parameters())
    st.preflight(model, loss_fn, data)
    st.start_epoch(model, loss_fn, None)   # final loss weights, unfrozen encoder
    gen = torch.Generator().manual_seed(cfg.seed)
    bs, n = cfg.train.batch_size, len(data.train)
    _, steps, _ = st.plan(cfg.train, n)    # raises when the split gives no batch
    cpu_threads = threads.apply(cfg.train.get("threads"), model, data, min(bs, n), device)
    console.print(f"[bold]aexp lr-find[/] {type(model).__name__} on {data.name}: lr {lrs[0]:.1e} -> "
                  f"{lrs[-1]:.1e} over {len(lrs)} steps · {device} · {cpu_threads}", soft_wrap=True)
    model.train()
    rows, avg, best = [], 0.0, math.inf
    perm = torch.randperm(n, generator=gen).to(device)
    for i, lr in enumerate(lrs):
        if i % steps == 0 and i:
            perm = torch.randperm(n, generator=gen).to(device)
        idx = perm[(i % steps) * bs:(i % steps + 1) * bs]
        for group in optimizer.param_groups:
            group["lr"] = float(lr)
        x, y = data.batch(data.train, idx, train=True)
        labels = data.train.labels(idx)
        loss = loss_fn(call(model, x, labels), x, y, model, labels=labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        st.clip_gradients(model, cfg.train.get("grad_clip"))
        optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        avg = beta * avg + (1 - beta) * value       # bias-corrected moving average
        smooth = avg / (1 - beta ** (i + 1))
        rows.append((float(lr), value, smooth))
        best = min(best, smooth)
        if i > 10 and smooth > stop_factor * best:
            break
    if len(rows) < 3:
        raise ConfigError(f"lr-find: the loss diverged at once (lr {lrs[0]:.1e}); lower lr_find.start")
    lr_col, loss_col, smooth_col = map(np.array, zip(*rows))
    best_lr = suggest(lr_col, smooth_col)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "lr_find.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lr", "loss", "smoothed_loss"])
        w.writerows(rows)
    plot(run_dir / "lr_find.png", lr_col, loss_col, smooth_col, best_lr)
    console.print(f"stopped after {len(rows)} steps (lr {lr_col[-1]:.2e}); plot {run_dir / 'lr_find.png'}")
    print(f"suggested lr: {best_lr:.3g}")
    return best_lr
