"""`aexp prior RUN`: a prior over a VQ-VAE's discrete codes, trained as a run of its own in
RUN/prior/: the PixelCNN of conf/prior/pixelcnn.yaml (aexp/models/pixelcnn.py) on the code maps
of the VQ run's training split (its best checkpoint), an epoch loop top to bottom, metrics.csv
(train and validation NLL per epoch), checkpoints/last.pt after every epoch and best.pt at the
best validation NLL. Run again after a kill (or with more `epochs=`), it continues from last.pt
with the same weights, optimiser, data order and RNG states (aexp.run.resume), so it ends with
exactly the weights of a run left alone; a signal stops it at the next step and the epoch is
redone on resume.

At the end, RUN/prior/nll.json: the test split's NLL in nats per code map under the prior,
beside a uniform prior over the codes (H·W·log K) and the empirical unigram distribution of the
training codes (each position independent, Laplace-smoothed counts)."""
import json
import math
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from aexp import checkpoint
from aexp.assemble import build, conf_dir, load_run, resolve_device, seed_everything
from aexp.errors import ArgumentParser, ConfigError, Interrupted
from aexp.io import atomic_write, folder_lock, write_csv
from aexp.run import faults, resume


def settings(overrides) -> object:
    """conf/prior/pixelcnn.yaml with `key=value` overrides; an unknown key is refused."""
    base = OmegaConf.load(conf_dir() / "prior" / "pixelcnn.yaml")
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or OmegaConf.select(base, key, default="<absent>") == "<absent>":
            raise ConfigError(f"aexp prior: unknown setting {item!r} (conf/prior/pixelcnn.yaml: "
                              f"{', '.join(k for k in base if k != 'model')}, model.*)")
    cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    for key in ("epochs", "batch_size", "threads"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"aexp prior: {key} must be a positive integer, got {cfg[key]!r}")
    if not isinstance(cfg.lr, (int, float)) or not cfg.lr > 0:
        raise ConfigError(f"aexp prior: lr must be a positive number, got {cfg.lr!r}")
    return cfg


@torch.no_grad()
def code_maps(run, split, batch: int = 500) -> torch.Tensor:
    """Each image's code indices [N, H, W] (the VQ model's nearest codes), on the CPU."""
    dev = split.x.device
    return torch.cat([run.model.code_indices(run.data.batch(split, torch.arange(i, min(i + batch, len(split)), device=dev))[0]).cpu()
                      for i in range(0, len(split), batch)])


@torch.no_grad()
def mean_nll(net, maps: torch.Tensor, device, batch: int = 256) -> float:
    """Mean -log p(code map) in nats over `maps`."""
    net.eval()
    total = sum(float(net.nll(maps[i:i + batch].to(device)).sum()) for i in range(0, len(maps), batch))
    return total / max(1, len(maps))


def unigram_nll(train: torch.Tensor, test: torch.Tensor, size: int) -> float:
    """NLL of the test maps when each position is an independent draw from the training codes'
    frequencies (Laplace-smoothed: an unseen code keeps a little probability)."""
    p = (torch.bincount(train.flatten(), minlength=size).double() + 1) / (train.numel() + size)
    return float(-p.log()[test.flatten()].sum() / max(1, len(test)))


def train_prior(run_dir: Path, overrides=(), log=print) -> dict:
    """Train (or continue) RUN_DIR/prior/; return nll.json's contents."""
    cfg = settings(overrides)
    run = load_run(run_dir, "best", device=str(cfg.device))
    if run.model.codebook_size is None:
        raise ConfigError(f"aexp prior needs a VQ run (model.codebook); {run_dir} has a continuous "
                          "code: sample it with aexp sample --sampler normal|gmm|two_stage|flow")
    folder = Path(run_dir) / "prior"
    with folder_lock(folder):
        return _train(run, cfg, folder, log)


def _train(run, cfg, folder: Path, log) -> dict:
    device = resolve_device(str(cfg.device))
    torch.set_num_threads(int(cfg.threads))
    config = OmegaConf.to_container(cfg, resolve=True)
    size = run.model.codebook_size
    maps = {name: code_maps(run, getattr(run.data, name)) for name in ("train", "val", "test")}
    seed_everything(int(cfg.seed))
    net = build(cfg.model, codebook_size=size).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=float(cfg.lr))
    gen = torch.Generator().manual_seed(int(cfg.seed))   # the data order, saved in checkpoints
    last_pt, best_pt = folder / "checkpoints" / "last.pt", folder / "checkpoints" / "best.pt"
    start, rows, best = 0, [], float("inf")
    if last_pt.is_file():
        saved = checkpoint.load(last_pt)
        diff = resume.differences(saved.get("config") or {}, config, may_change=("epochs", "device", "threads"))
        if diff or saved.get("run_epoch") != run.state.get("epoch"):
            what = f"its settings differ at {diff[0]}" if diff else "the VQ run's checkpoint changed"
            raise ConfigError(f"cannot continue {folder}: {what}; give the same settings, or delete "
                              f"{folder} to train a new prior")
        try:
            net.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            resume.restore_rng(saved["rng"], gen)
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise ConfigError(f"{last_pt} does not fit this prior: {str(e).splitlines()[0][:160]}") from None
        start, rows, best = saved["epoch"], list(saved["history"]), saved["best_val_nll"]
        write_csv(folder / "metrics.csv", rows)   # drop a row written after the checkpoint
        log(f"resuming the prior from {last_pt} after epoch {start}")
    n, bs = len(maps["train"]), int(cfg.batch_size)
    state = lambda epoch: {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                           "epoch": epoch, "rng": resume.rng_state(gen), "config": config,
                           "history": rows, "best_val_nll": best, "codebook_size": size,
                           "code_shape": list(maps["train"].shape[1:]), "run_epoch": run.state.get("epoch")}
    with faults.StopSignals() as stop:
        for epoch in range(start + 1, int(cfg.epochs) + 1):
            t0, total = time.perf_counter(), 0.0
            net.train()
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, bs):
                if stop.requested():   # the epoch is redone on resume: last.pt holds the one before
                    raise Interrupted(f"stopped by {stop.name} in epoch {epoch} (redone on resume); "
                                      f"continue with: aexp prior {run.run_dir}", stop.signum)
                batch = maps["train"][perm[i:i + bs]].to(device)
                loss = net.nll(batch).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            row = {"epoch": epoch, "train_nll": total / n, "val_nll": mean_nll(net, maps["val"], device),
                   "seconds": round(time.perf_counter() - t0, 4)}
            rows.append(row)
            improved, best = row["val_nll"] < best, min(best, row["val_nll"])
            write_csv(folder / "metrics.csv", rows)
            if improved:
                checkpoint.save(best_pt, state(epoch))
            checkpoint.save(last_pt, state(epoch))   # the commit point, written last
            log(f"prior epoch {epoch}/{cfg.epochs}  train {row['train_nll']:.4g}  val {row['val_nll']:.4g} "
                f"nats per map  {row['seconds']:.2f}s")
    net.load_state_dict(checkpoint.load(best_pt)["model"])
    h, w = maps["test"].shape[1:]
    report = {"test_nll": mean_nll(net, maps["test"], device), "uniform_nll": h * w * math.log(size),
              "unigram_nll": unigram_nll(maps["train"], maps["test"], size), "units": "nats per code map",
              "code_shape": [h, w], "codebook_size": size, "test_maps": len(maps["test"]),
              "best_epoch": min(rows, key=lambda r: r["val_nll"])["epoch"]}
    atomic_write(folder / "nll.json", lambda f: f.write(json.dumps(report, indent=2).encode()))
    return report


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="aexp prior", description="Train a PixelCNN prior over a VQ-VAE run's "
                        "code maps in RUN_DIR/prior/ (run again to continue after a stop).")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                    help="conf/prior/pixelcnn.yaml settings, e.g. epochs=30 model.layers=8")
    args = ap.parse_args(argv)
    report = train_prior(args.run_dir, args.settings, log=lambda m: print(m, flush=True))
    print(f"test NLL {report['test_nll']:.2f} nats per code map (uniform prior {report['uniform_nll']:.2f}, "
          f"unigram {report['unigram_nll']:.2f}); wrote {args.run_dir / 'prior'}")
    return 0
