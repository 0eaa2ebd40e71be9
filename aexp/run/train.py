"""One training run, top to bottom: build the five config groups, then the epoch loop with
validation, metrics, checkpoints and latent frames as plain function calls. Writes the run
folder (metrics.csv, checkpoints/, frames/); evaluating it is the job's next step (aexp.jobs)."""
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from aexp import checkpoint
from aexp.assemble import build, build_parts, build_schedule, check_config, resolve_device, seed_everything
from aexp.errors import Interrupted, TrainingDiverged
from aexp.io import write_csv
from aexp.models import call
from aexp.run import distributed, faults, resume, steps as st, threads
from aexp.run import precision as prec
from aexp.run.frames import FrameWriter
from aexp.run.resume import EpochProgress
from aexp.run.schedules import per_batch
from aexp.run.trackers.group import Trackers



class RunConsole(Console):
    """rich's console on stderr whose messages also go, as plain text, to the run's log file
    (the file handlers Hydra gives the root logger: RUN_DIR/train.log). Not through `logging`
    itself, whose console handler would print every line a second time."""

    def print(self, *objects, **kwargs):
        super().print(*objects, **kwargs)
        self._to_log_file(objects)

    def log(self, *objects, **kwargs):
        super().log(*objects, **kwargs)
        self._to_log_file(objects)

    @staticmethod
    def _to_log_file(objects) -> None:
        files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
        text = " ".join(Text.from_markup(o).plain if isinstance(o, str) else str(o) for o in objects)
        if files and text.strip():   # (the progress bar prints empty lines as it closes)
            record = logging.LogRecord("aexp", logging.INFO, __file__, 0, text, None, None)
            for handler in files:
                handler.handle(record)


console = RunConsole(stderr=True, log_path=False)


def train(cfg: DictConfig, run_dir: Path, overrides: list[str] = (),
          trackers: Trackers | None = None) -> dict:
    """Train one run into `run_dir`, or continue it from its last checkpoint (see run.resume);
    return the final metrics row. `overrides`: the command line's, kept in checkpoints.
    `trackers`: where metrics go besides metrics.csv (the job opens those of `cfg.logger`)."""
    run_dir = Path(run_dir)
    trackers = Trackers() if trackers is None else trackers
    device = setup(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    resume_from = resume.checkpoint_path(cfg, run_dir)
    saved = checkpoint.load(resume_from) if resume_from else None
    if saved:
        resume.check_same_config(saved["config"], config, resume_from)

    data, model, loss_fn = build_parts(cfg, device)
    optimizer = build(cfg.optimizer, params=model.parameters())
    bs, n = cfg.train.batch_size, len(data.train)
    per_step = min(bs, n) / distributed.world()   # samples per step on this process
    cpu_threads = threads.apply(cfg.train.get("threads"), model, data, per_step, device)
    epochs, steps, total_steps = st.plan(cfg.train, n)   # train.epochs or train.max_steps
    scheduler = build_schedule(cfg.schedule, optimizer, total_steps)
    st.preflight(model, loss_fn, data)
    st.check_progressive(model, data, cfg.train.get("progressive"))
    # fp32 or bf16 autocast: `auto` decided once per run and kept by its resumes (run_info.json)
    precision, why = prec.choose(cfg.train.precision, device, model, data, per_step, resume_from)
    if distributed.is_main():
        prec.record(run_dir, precision, why, device)

    n_params = sum(p.numel() for p in model.parameters())
    console.print(f"[bold]aexp[/] {type(model).__name__} ({n_params:,} parameters) on "
                  f"{data.name} ({len(data.train)} train / {len(data.val)} val) · {device} · "
                  f"{cpu_threads} · {precision} ({why}){data_note(data)} · run folder {run_dir}",
                  soft_wrap=True)
    main = distributed.is_main()   # only rank 0 writes frames, metrics and checkpoints
    frames = FrameWriter(data, run_dir / "frames", probe_size=cfg.frames.probe_size,
                         size=cfg.frames.size, seed=cfg.seed) if cfg.frames.enabled and main else None
    gen = torch.Generator().manual_seed(cfg.seed)   # data order, saved in checkpoints
    start, rows, best, partial = 0, [], float("inf"), None
    if saved:
        start, rows, best, partial = resume.restore(saved, model=model, optimizer=optimizer,
                                                    scheduler=scheduler, gen=gen, frames=frames,
                                                    loss=loss_fn)
        if main:
            write_csv(run_dir / "metrics.csv", rows)   # drop a row written after the checkpoint
        console.print(f"resuming from {resume_from} after epoch {start}"
                      + (f", step {partial['step']}" if partial else ""), soft_wrap=True)
    elif frames:
        frames.write(model, 0)
    trackers.start(config, rows, epoch=start, step=start * steps + (partial["step"] if partial else 0))

    net = st.compiled(distributed.wrap(model, n, bs), cfg.train.compile)  # DDP under torchrun
    autocast = st.autocast(precision, device)   # the precision decided above
    last_pt = run_dir / "checkpoints" / "last.pt"
    state = lambda epoch, partial=None: resume.training_state(
        epoch=epoch, model=model, optimizer=optimizer, scheduler=scheduler, gen=gen, frames=frames,
        history=rows, best=best, config=config, overrides=overrides, partial=partial, loss=loss_fn)
    progress = progress_bar()
    with progress, faults.StopSignals() as stop:
        task = progress.add_task("epoch", total=total_steps, info="", completed=start * steps)
        for epoch in range(start + 1, epochs + 1):
            t0 = time.perf_counter()
            model.train()
            st.start_epoch(model, loss_fn, epoch)
            size = st.progressive_size(cfg.train.get("progressive"), epoch)
            ep = EpochProgress.begin(partial, data, gen, data.train.x.device)
            data.train.plan(distributed.shard(ep.perm[s * bs:(s + 1) * bs])[0]   # read ahead
                            for s in range(ep.step, steps))                     # (data.storage)
            partial, shown, watch = None, 0.0, faults.FirstNonFinite()
            for step in range(ep.step, steps):
                done = (epoch - 1) * steps + step     # batches before this one (train.max_steps)
                if done >= total_steps:
                    break
                if stop.requested():    # a safe point: save everything, this epoch's progress too
                    if main:
                        checkpoint.save(last_pt, state(epoch - 1, ep.saved(step)))
                    raise stopped(stop, epoch, step, steps, last_pt, run_dir)
                batch = ep.perm[step * bs:(step + 1) * bs]
                idx, scale = distributed.shard(batch)
                x, y = st.resize(*data.batch(data.train, idx, train=True), size)
                labels = data.train.labels(idx)   # (a conditional model takes them too)
                with autocast:
                    out = call(model, x, labels, net=net)
                    terms = loss_fn(out, x, y, model, labels=labels)
                if not cfg.train.skip_nonfinite:
                    watch.record(step, terms)       # checked at the epoch's end: no sync here
                elif not faults.finite(terms["loss"]):  # deciding per batch costs a sync per step
                    ep.skipped += 1  # train.skip_nonfinite: this batch does not update the weights
                    continue
                optimizer.zero_grad(set_to_none=True)
                (terms["loss"] * scale if scale != 1.0 else terms["loss"]).backward()
                st.clip_gradients(model, cfg.train.get("grad_clip"))
                optimizer.step()
                if per_batch(scheduler):
                    scheduler.step()
                # loss terms with an optimiser of their own (a critic) step next, on this batch
                terms.update(loss_fn.auxiliary_step(out, x, y, model))
                ep.add(terms, len(batch), len(idx))  # on the device: no sync per step
                trackers.log_step(done + 1, terms["loss"])   # reads it only every N steps
                last = step == steps - 1 or done + 1 == total_steps
                if time.perf_counter() - shown > 0.5 or last:  # reading the loss syncs
                    shown = time.perf_counter()
                    progress.update(task, completed=done + 1, description=f"epoch {epoch}/{epochs}",
                                    info=f"loss {terms['loss'].item():.4g}")
            train_seconds = time.perf_counter() - t0
            train_terms = epoch_means(ep, watch, epoch, last_pt)
            val_terms = st.validation_loss(model, loss_fn, data, data.val, cfg.train.eval_batch_size)
            check_finite(train_terms, val_terms, epoch, last_pt)
            lr = optimizer.param_groups[0]["lr"]
            end_of_epoch(scheduler, val_terms["loss"])
            row = epoch_row(epoch, train_terms, val_terms,
                            ep.skipped if cfg.train.skip_nonfinite else None)
            t_frame = time.perf_counter()
            if frames and epoch % cfg.frames.every == 0:
                frames.write(model, epoch)
            row.update(lr=lr, seconds=round(time.perf_counter() - t0, 4),
                       train_seconds=round(train_seconds, 4),
                       frame_seconds=round(time.perf_counter() - t_frame, 4))
            rows.append(row)
            # Order matters for a kill at any moment: everything an epoch writes (frame, metrics,
            # trackers, best.pt) comes before last.pt, the commit point; a run killed earlier
            # redoes the epoch and rewrites them (trackers skip or replace it: run.trackers).
            trackers.log_epoch(row)
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
    return rows[-1]


def setup(cfg) -> torch.device:
    """Check the config, pick the device, seed every generator. (CPU threads are set once the
    model is built: `auto` decides from its cost, aexp.run.threads.)"""
    check_config(cfg)
    device = distributed.place(resolve_device(cfg.device))
    torch.backends.cudnn.benchmark = device.type == "cuda"   # fixed shapes: pick the fastest conv
    console.quiet = not distributed.is_main()   # under torchrun, rank 0 speaks for all
    seed_everything(cfg.seed)
    return device


def data_note(data) -> str:
    """Where the images live and how many files were left out, for the banner."""
    note = f" · data {data.placed}" if data.placed else ""
    return note + (f" · {data.skipped} unreadable image file(s) skipped" if data.skipped else "")


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def stopped(stop, epoch: int, step: int, steps: int, last_pt: Path, run_dir: Path) -> Interrupted:
    return Interrupted(f"stopped by {stop.name} at epoch {epoch}, step {step} of {steps}; checkpoint "
                       f"saved to {last_pt}; resume with: aexp train resume={run_dir}", stop.signum)


def end_of_epoch(scheduler, val_loss: float) -> None:
    """Step an epoch schedule: plateau on the validation loss, the others by count (the
    per-batch ones stepped after every batch already)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    elif not per_batch(scheduler):
        scheduler.step()


def epoch_means(ep: EpochProgress, watch, epoch: int, last_pt: Path) -> dict:
    """The epoch's mean training loss terms over every process; refuses an epoch whose loss
    went non-finite (train.skip_nonfinite=false) or whose every batch was skipped."""
    first_bad = watch.check()
    if first_bad:
        raise TrainingDiverged(
            f"loss is not finite at epoch {epoch}, step {first_bad[0]} "
            f"({faults.describe_terms(first_bad[1])}); the last good checkpoint is "
            f"{last_good(last_pt)}")
    if ep.seen == 0:
        raise TrainingDiverged(f"every batch of epoch {epoch} had a non-finite loss; the last "
                               f"good checkpoint is {last_good(last_pt)}")
    sums = distributed.all_sum(ep.sums)
    return {k: float(v) / ep.seen for k, v in sums.items()}


def check_finite(train_terms: dict, val_terms: dict, epoch: int, last_pt: Path) -> None:
    bad = {k: v for k, v in {**train_terms, **val_terms}.items() if not np.isfinite(v)}
    if bad:
        raise TrainingDiverged(f"loss is not finite at the end of epoch {epoch} "
                               f"({faults.describe_terms(bad)}); the last good checkpoint is "
                               f"{last_good(last_pt)}")


def last_good(last_pt: Path) -> str:
    return str(last_pt) if last_pt.is_file() else "none (no epoch finished)"


def epoch_row(epoch: int, train_terms: dict, val_terms: dict, skipped: int | None) -> dict:
    """A metrics.csv row (before its lr and timing columns): the losses, then every term."""
    row = {"epoch": epoch, "train_loss": train_terms["loss"], "val_loss": val_terms["loss"]}
    row.update({f"train_{k}": v for k, v in train_terms.items() if k != "loss"})
    row.update({f"val_{k}": v for k, v in val_terms.items() if k != "loss"})
    if skipped is not None:   # train.skip_nonfinite
        row["skipped_batches"] = skipped
    return row
