"""One training run, top to bottom: build the five config groups, then the epoch loop with
validation, metrics, checkpoints and latent frames as plain function calls."""
import random
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from aexp import checkpoint, distributed
from aexp.errors import AexpError, ConfigError, TrainingDiverged, unwrap
from aexp.frames import FrameWriter
from aexp.metrics import write_csv

console = Console(stderr=True, log_path=False)


def build(node, **kwargs):
    """`hydra.utils.instantiate`, with our own errors unwrapped from Hydra's wrapper."""
    try:
        return instantiate(node, **kwargs)
    except Exception as e:
        inner = unwrap(e)
        if isinstance(inner, AexpError):
            raise inner from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot build {node.get('_target_', '?')}: {first}") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} asked for, but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_parts(cfg, device) -> tuple:
    """Data (resident on `device`, with the run's task and corruption), model and loss of a
    run config: what training, evaluation and every command that loads a finished run share."""
    data = build(cfg.dataset).prepare(build(cfg.task), build(cfg.corruption)).to(device)
    model = build(cfg.model, in_shape=data.in_shape, out_shape=data.out_shape).to(device)
    return data, model, build(cfg.loss)


def check_config(cfg) -> None:
    t = cfg.train
    if t.epochs < 1:
        raise ConfigError(f"train.epochs must be at least 1, got {t.epochs}")
    if t.batch_size < 1:
        raise ConfigError(f"train.batch_size must be at least 1, got {t.batch_size}")
    if cfg.optimizer.get("lr", 1.0) <= 0:
        raise ConfigError(f"optimizer.lr must be positive, got {cfg.optimizer.lr}")


def preflight(model, loss_fn, data) -> None:
    """One forward and loss on two samples, so a model that cannot take the data's shape, or a
    loss that does not fit the model, fails before any work with one clear line."""
    x, y = data.batch(data.train, torch.arange(2, device=data.train.x.device))
    try:
        with torch.no_grad():
            out = model(x)
            terms = loss_fn(out, x, y, model)
    except AexpError:
        raise
    except RuntimeError as e:
        raise ConfigError(f"model {type(model).__name__} cannot take {data.name} data of shape "
                          f"{tuple(data.in_shape)}: {str(e).splitlines()[0]}") from None
    if out.x_hat.shape != y.shape:
        raise ConfigError(f"model output shape {tuple(out.x_hat.shape[1:])} differs from the "
                          f"target shape {tuple(y.shape[1:])}")
    if not all(torch.isfinite(v) for v in terms.values()):
        raise ConfigError("the loss is not finite on the first batch")


@torch.no_grad()
def evaluate(model, loss_fn, data, split, batch_size: int) -> dict:
    """Batch-size-weighted mean of every loss term over a split (model in eval mode)."""
    model.eval()
    sums, n = {}, len(split)
    for i in range(0, n, batch_size):
        x, y = data.batch(split, torch.arange(i, min(i + batch_size, n), device=split.x.device))
        for k, v in loss_fn(model(x), x, y, model).items():
            sums[k] = sums.get(k, 0.0) + v.detach() * len(x)
    model.train()
    return {k: float(v) / n for k, v in sums.items()}


def rng_state(gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "data": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train one run into `run_dir`; return the final metrics row."""
    run_dir = Path(run_dir)
    check_config(cfg)
    device = distributed.place(resolve_device(cfg.device))
    console.quiet = not distributed.is_main()   # under torchrun, rank 0 speaks for all
    seed_everything(cfg.seed)

    data, model, loss_fn = build_parts(cfg, device)
    optimizer = build(cfg.optimizer, params=model.parameters())
    scheduler = build(cfg.schedule, optimizer=optimizer)
    preflight(model, loss_fn, data)

    n_params = sum(p.numel() for p in model.parameters())
    console.print(f"[bold]aexp[/] {type(model).__name__} ({n_params:,} parameters) on "
                  f"{data.name} ({len(data.train)} train / {len(data.val)} val) · {device} · "
                  f"run folder {run_dir}")
    main = distributed.is_main()   # only rank 0 writes frames, metrics and checkpoints
    frames = FrameWriter(data, run_dir / "frames", probe_size=cfg.frames.probe_size,
                         size=cfg.frames.size, seed=cfg.seed) if cfg.frames.enabled and main else None
    if frames:
        frames.write(model, 0)

    config = OmegaConf.to_container(cfg, resolve=True)
    gen = torch.Generator().manual_seed(cfg.seed)   # data order, saved in checkpoints
    epochs, bs, n = cfg.train.epochs, cfg.train.batch_size, len(data.train)
    # A final batch of one sample would break BatchNorm in training mode: fold it away.
    steps = n // bs + (1 if n % bs > 1 else 0)
    rows, best = [], float("inf")
    net = distributed.wrap(model, n, bs)   # DDP under torchrun, else the model itself
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    with progress:
        task = progress.add_task("epoch", total=epochs * steps, info="")
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            model.train()
            data.new_epoch(gen)                 # fresh samples, for datasets drawn per epoch
            perm = torch.randperm(n, generator=gen).to(device, non_blocking=True)
            sums, shown = {}, 0.0
            for step in range(steps):
                idx, scale = distributed.shard(perm[step * bs:(step + 1) * bs])
                x, y = data.batch(data.train, idx, train=True)
                terms = loss_fn(net(x), x, y, model)
                optimizer.zero_grad(set_to_none=True)
                (terms["loss"] * scale if scale != 1.0 else terms["loss"]).backward()
                optimizer.step()
                for k, v in terms.items():      # accumulated on the device: no sync per step
                    sums[k] = sums.get(k, 0.0) + v.detach() * len(idx)
                if time.perf_counter() - shown > 0.5 or step == steps - 1:  # reading the loss syncs
                    shown = time.perf_counter()
                    progress.update(task, completed=(epoch - 1) * steps + step + 1,
                                    description=f"epoch {epoch}/{epochs}",
                                    info=f"loss {terms['loss'].item():.4g}")
            train_seconds = time.perf_counter() - t0
            seen = min(steps * bs, n)
            sums = distributed.all_sum(sums)
            train_terms = {k: float(v) / seen for k, v in sums.items()}
            val_terms = evaluate(model, loss_fn, data, data.val, cfg.train.eval_batch_size)
            bad = {k: v for k, v in {**train_terms, **val_terms}.items() if not np.isfinite(v)}
            if bad:
                raise TrainingDiverged(
                    f"loss is not finite at epoch {epoch} ({', '.join(f'{k}={v}' for k, v in bad.items())}); "
                    f"the last good checkpoint is {run_dir / 'checkpoints' / 'last.pt'}")
            lr = optimizer.param_groups[0]["lr"]
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_terms["loss"])
            else:
                scheduler.step()
            row = {"epoch": epoch, "train_loss": train_terms["loss"], "val_loss": val_terms["loss"]}
            row.update({f"train_{k}": v for k, v in train_terms.items() if k != "loss"})
            row.update({f"val_{k}": v for k, v in val_terms.items() if k != "loss"})
            t_frame = time.perf_counter()
            if frames and epoch % cfg.frames.every == 0:
                frames.write(model, epoch)
            row.update(lr=lr, seconds=round(time.perf_counter() - t0, 4),
                       train_seconds=round(train_seconds, 4),
                       frame_seconds=round(time.perf_counter() - t_frame, 4))
            rows.append(row)
            if main:
                write_csv(run_dir / "metrics.csv", rows)
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "epoch": epoch, "rng": rng_state(gen),
                     "config": config, "metrics": row, "best_val_loss": min(best, row["val_loss"])}
            if main:
                checkpoint.save(run_dir / "checkpoints" / "last.pt", state)
            if row["val_loss"] < best:
                best = row["val_loss"]
                if main:
                    checkpoint.save(run_dir / "checkpoints" / "best.pt", state)
            console.log(f"epoch {epoch:>{len(str(epochs))}}/{epochs}  train {row['train_loss']:.5g}  "
                        f"val {row['val_loss']:.5g}  lr {lr:.3g}  {row['seconds']:.2f}s")
    total = sum(r["seconds"] for r in rows)
    console.print(f"[bold green]done[/] {epochs} epochs in {total:.1f}s · best val loss {best:.5g} · "
                  f"{run_dir}")
    if main:
        from aexp.evaluate import after_training   # test metrics + pictures when eval.enabled
        after_training(cfg, run_dir)
    return rows[-1]
