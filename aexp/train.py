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

from aexp import checkpoint, distributed, faults, loop, resume, validate
from aexp.errors import AexpError, ConfigError, Interrupted, TrainingDiverged, unwrap
from aexp.frames import FrameWriter
from aexp.metrics import write_csv
from aexp.schedules import build_schedule, per_batch

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
    if cfg.train.get("channels_last", True):
        # 4-D weights stored NHWC: convolutions run 1.2-1.4x faster on CPU (oneDNN) and suit
        # tensor cores on GPU; a model without convolutions is unchanged
        model = model.to(memory_format=torch.channels_last)
    return data, model, build(cfg.loss)


def check_config(cfg) -> None:
    # Unknown keys, wrong types, values below their minimum (train.epochs, train.batch_size, ...)
    # and a non-positive optimizer.lr are refused by validate.check.
    validate.check(cfg)
    t = cfg.train
    if t.get("grad_clip") is not None and t.grad_clip <= 0:
        raise ConfigError(f"train.grad_clip must be positive (or null), got {t.grad_clip}")


def preflight(model, loss_fn, data) -> None:
    """One forward and loss on two samples, so a model that cannot take the data's shape, or a
    loss that does not fit the model, fails before any work with one clear line."""
    idx = torch.arange(min(2, len(data.train)), device=data.train.x.device)
    x, y = data.batch(data.train, idx)
    try:
        with torch.no_grad():
            out = model(x)
            terms = loss_fn(out, x, y, model, labels=loop.labels(data.train, idx))
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
        idx = torch.arange(i, min(i + batch_size, n), device=split.x.device)
        x, y = data.batch(split, idx)
        for k, v in loss_fn(model(x), x, y, model, labels=loop.labels(split, idx)).items():
            sums[k] = sums.get(k, 0.0) + v.detach() * len(x)
    model.train()
    return {k: float(v) / n for k, v in sums.items()}


def train(cfg: DictConfig, run_dir: Path, overrides: list[str] = ()) -> dict:
    """Train one run into `run_dir`, or continue it from its last checkpoint (see aexp.resume);
    return the final metrics row. `overrides`: the command line's, kept in checkpoints."""
    run_dir = Path(run_dir)
    check_config(cfg)
    device = distributed.place(resolve_device(cfg.device))
    torch.backends.cudnn.benchmark = device.type == "cuda"   # fixed shapes: pick the fastest conv
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    console.quiet = not distributed.is_main()   # under torchrun, rank 0 speaks for all
    seed_everything(cfg.seed)
    config = OmegaConf.to_container(cfg, resolve=True)
    resume_from = resume.checkpoint_path(cfg, run_dir)
    saved = checkpoint.load(resume_from) if resume_from else None
    if saved:
        resume.check_same_config(saved["config"], config, resume_from)

    data, model, loss_fn = build_parts(cfg, device)
    optimizer = build(cfg.optimizer, params=model.parameters())
    bs, n = cfg.train.batch_size, len(data.train)
    epochs, steps, total_steps = loop.plan(cfg.train, n)   # train.epochs or train.max_steps
    scheduler = build_schedule(cfg.schedule, optimizer, total_steps)
    preflight(model, loss_fn, data)
    loop.check_progressive(model, data, cfg.train.get("progressive"))

    n_params = sum(p.numel() for p in model.parameters())
    console.print(f"[bold]aexp[/] {type(model).__name__} ({n_params:,} parameters) on "
                  f"{data.name} ({len(data.train)} train / {len(data.val)} val) · {device} · "
                  f"run folder {run_dir}")
    main = distributed.is_main()   # only rank 0 writes frames, metrics and checkpoints
    frames = FrameWriter(data, run_dir / "frames", probe_size=cfg.frames.probe_size,
                         size=cfg.frames.size, seed=cfg.seed) if cfg.frames.enabled and main else None
    gen = torch.Generator().manual_seed(cfg.seed)   # data order, saved in checkpoints
    start, rows, best, partial = 0, [], float("inf"), None
    if saved:
        start, rows, best, partial = resume.restore(saved, model=model, optimizer=optimizer,
                                                    scheduler=scheduler, gen=gen, frames=frames)
        if main:
            write_csv(run_dir / "metrics.csv", rows)   # drop a row written after the checkpoint
        console.print(f"resuming from {resume_from} after epoch {start}"
                      + (f", step {partial['step']}" if partial else ""), soft_wrap=True)
    elif frames:
        frames.write(model, 0)

    net = loop.compiled(distributed.wrap(model, n, bs), cfg.train.compile)  # DDP under torchrun
    autocast = loop.autocast(cfg.train.precision, device)   # bf16 on CUDA by default
    last_pt = run_dir / "checkpoints" / "last.pt"
    state = lambda epoch, partial=None: resume.training_state(
        epoch=epoch, model=model, optimizer=optimizer, scheduler=scheduler, gen=gen, frames=frames,
        history=rows, best=best, config=config, overrides=overrides, partial=partial)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    with progress, faults.StopSignals() as stop:
        task = progress.add_task("epoch", total=total_steps, info="", completed=start * steps)
        for epoch in range(start + 1, epochs + 1):
            t0 = time.perf_counter()
            model.train()
            loop.start_epoch(model, loss_fn, epoch)
            size = loop.progressive_size(cfg.train.get("progressive"), epoch)
            perm, first, sums, seen, skipped, drawn_from = resume.epoch_start(partial, data, gen,
                                                                              device)
            partial, shown, watch = None, 0.0, faults.FirstNonFinite()
            for step in range(first, steps):
                done = (epoch - 1) * steps + step     # batches before this one (train.max_steps)
                if done >= total_steps:
                    break
                if stop.requested():    # a safe point: save everything, this epoch's progress too
                    if main:
                        checkpoint.save(last_pt, state(epoch - 1, {
                            "step": step, "perm": perm.cpu(), "seen": seen, "skipped": skipped,
                            "sums": {k: v.detach().cpu() for k, v in sums.items()},
                            "drawn_from": drawn_from}))
                    raise Interrupted(f"stopped by {stop.name} at epoch {epoch}, step {step} of "
                                      f"{steps}; checkpoint saved to {last_pt}; resume with: "
                                      f"aexp train resume={run_dir}", stop.signum)
                batch = perm[step * bs:(step + 1) * bs]
                idx, scale = distributed.shard(batch)
                x, y = loop.resize(*data.batch(data.train, idx, train=True), size)
                with autocast:
                    terms = loss_fn(net(x), x, y, model, labels=loop.labels(data.train, idx))
                if not cfg.train.skip_nonfinite:
                    watch.record(step, terms)       # checked at the epoch's end: no sync here
                elif not faults.finite(terms["loss"]):  # deciding per batch costs a sync per step
                    skipped += 1    # train.skip_nonfinite: this batch does not update the weights
                    continue
                optimizer.zero_grad(set_to_none=True)
                (terms["loss"] * scale if scale != 1.0 else terms["loss"]).backward()
                loop.clip_gradients(model, cfg.train.get("grad_clip"))
                optimizer.step()
                if per_batch(scheduler):
                    scheduler.step()
                seen += len(batch)                # the whole batch: sums are added over ranks
                for k, v in terms.items():      # accumulated on the device: no sync per step
                    sums[k] = sums.get(k, 0.0) + v.detach() * len(idx)
                last = step == steps - 1 or done + 1 == total_steps
                if time.perf_counter() - shown > 0.5 or last:  # reading the loss syncs
                    shown = time.perf_counter()
                    progress.update(task, completed=done + 1,
                                    description=f"epoch {epoch}/{epochs}",
                                    info=f"loss {terms['loss'].item():.4g}")
            train_seconds = time.perf_counter() - t0
            first_bad = watch.check()
            if first_bad:
                raise TrainingDiverged(
                    f"loss is not finite at epoch {epoch}, step {first_bad[0]} "
                    f"({faults.describe_terms(first_bad[1])}); the last good checkpoint is "
                    f"{last_pt if last_pt.is_file() else 'none (no epoch finished)'}")
            if seen == 0:
                raise TrainingDiverged(f"every batch of epoch {epoch} had a non-finite loss")
            sums = distributed.all_sum(sums)
            train_terms = {k: float(v) / seen for k, v in sums.items()}
            val_terms = evaluate(model, loss_fn, data, data.val, cfg.train.eval_batch_size)
            bad = {k: v for k, v in {**train_terms, **val_terms}.items() if not np.isfinite(v)}
            if bad:
                raise TrainingDiverged(f"loss is not finite at the end of epoch {epoch} "
                                       f"({faults.describe_terms(bad)}); the last good "
                                       f"checkpoint is {last_pt}")
            lr = optimizer.param_groups[0]["lr"]
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_terms["loss"])
            elif not per_batch(scheduler):
                scheduler.step()
            row = {"epoch": epoch, "train_loss": train_terms["loss"], "val_loss": val_terms["loss"]}
            row.update({f"train_{k}": v for k, v in train_terms.items() if k != "loss"})
            row.update({f"val_{k}": v for k, v in val_terms.items() if k != "loss"})
            if cfg.train.skip_nonfinite:
                row["skipped_batches"] = skipped
            t_frame = time.perf_counter()
            if frames and epoch % cfg.frames.every == 0:
                frames.write(model, epoch)
            row.update(lr=lr, seconds=round(time.perf_counter() - t0, 4),
                       train_seconds=round(train_seconds, 4),
                       frame_seconds=round(time.perf_counter() - t_frame, 4))
            rows.append(row)
            # Order matters for a kill at any moment: everything an epoch writes (frame, metrics,
            # best.pt) comes before last.pt, the commit point; a run killed earlier redoes the
            # epoch and rewrites them.
            improved = row["val_loss"] < best
            best = min(best, row["val_loss"])
            if main:
                write_csv(run_dir / "metrics.csv", rows)
                if improved:
                    checkpoint.save(run_dir / "checkpoints" / "best.pt", state(epoch))
                checkpoint.save(last_pt, state(epoch))
            console.log(f"epoch {epoch:>{len(str(epochs))}}/{epochs}  train {row['train_loss']:.5g}  "
                        f"val {row['val_loss']:.5g}  lr {lr:.3g}  {row['seconds']:.2f}s")
    total = sum(r["seconds"] for r in rows)
    console.print(f"[bold green]done[/] {len(rows)} epochs in {total:.1f}s · best val loss {best:.5g} · "
                  f"{run_dir}")
    if main:
        from aexp.evaluate import after_training   # test metrics + pictures when eval.enabled
        after_training(cfg, run_dir)
    return rows[-1]
