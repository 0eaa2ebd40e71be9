"""Resuming a run. Which checkpoint a run continues from (`resume=RUN_DIR`, or the run folder's own
`checkpoints/last.pt`, which is what a requeued cluster job finds), and the training state saved
into and restored from a checkpoint: model, optimizer, scheduler, the loss's own trained state
(a critic and its optimiser), every RNG, the data order, the metrics rows, the best validation
loss and the frame writer's axes, so that on the CPU an interrupted run finishes with exactly
the weights and metrics of the run left alone."""
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from aexp import checkpoint
from aexp import trust
from aexp.assemble import allowed_targets, upgrade
from aexp.errors import CheckpointError, ConfigError
from aexp.io import flatten

# Config keys a resumed run may change: where it continues from, how long it goes on, where,
# and where its metrics go besides metrics.csv (trackers).
MAY_CHANGE = ("resume", "train.epochs", "device", "logger")

# How fast, not what: a run resumes, and a finished run stays finished, whatever these are now,
# present, absent or changed (e.g. a run saved with `threads: null` or `channels_last: true`
# under today's `auto`). The maths is the same; another thread count or memory layout can only
# change the order of floating-point sums, so a resume is bit-exact when they decide the same.
# Where the images live and how they were decoded (dataset.storage, the decode cache and its
# workers) change nothing at all: the same batches, the same pixels.
# train.precision counts here too, though bf16 rounds otherwise: `auto` keeps the precision the run
# started in (its run_info.json, aexp.run.precision), another one given on resuming is the user's
# choice and the banner says so; a run's precision never un-finishes it or blocks its resume.
SPEED_ONLY = ("train.threads", "train.channels_last", "dataset.storage", "dataset.memory_budget",
              "dataset.workers", "dataset.cache", "dataset.cache_dir", "train.precision")

# What happens after training: the evaluation and the value a sweep reads off the run. A run
# resumes, and a finished run stays finished, whatever these are now (a changed default such as
# eval.nll_samples must not make every earlier run "a different config").
AFTER_TRAINING = ("eval.", "objective.")

# Options added after runs were made: key -> (does this value reproduce a run saved without the
# key?, the override that does). A run from before the key existed resumes when it does.
ADDED_LATER = {
    # baseline32's code activation was always the stages' own activation
    "model.code_activation": (lambda saved, value: value in (None, saved.get("model.activation")),
                              "model.code_activation=null"),
    # baseline32 always ended in its full-size conv head
    "model.head": (lambda saved, value: value in (None, True), "model.head=true"),
    # image folders with an unreadable file always refused to load
    "dataset.skip_bad": (lambda saved, value: value in (None, False), "dataset.skip_bad=false"),
    # training images were always used as stored
    "task.binarize": (lambda saved, value: value in (None, False), "task.binarize=false"),
    # a VQ codebook always started from restarts; kmeans_iters means nothing without k-means
    "model.codebook.init": (lambda saved, value: value in (None, "random"), "model.codebook.init=random"),
    "model.codebook.kmeans_iters": (lambda saved, value: saved.get("model.codebook.init") in (None, "random"),
                                    "model.codebook.init=random"),
}


def _disabled(value) -> bool:
    return value is False or str(value).lower() in ("false", "no", "off")


def argv_for(argv: list[str]) -> list[str]:
    """Command-line overrides for `aexp train ... resume=RUN_DIR`: the run's own overrides first
    and the new ones after (later wins), and Hydra writes into RUN_DIR, so `aexp train
    resume=RUN_DIR` alone recomposes the run's own config. The run's overrides come from its
    checkpoint, written only once a run was accepted (Hydra rewrites .hydra/overrides.yaml at
    every start, a refused one included); .hydra/overrides.yaml is the fallback."""
    given = [a for a in argv if a.startswith("resume=")]
    value = given[-1].split("=", 1)[1] if given else ""
    if value in ("", "null", "None") or _disabled(value):
        return argv
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"resume={value}: no such run folder")
    if any(a in ("-m", "--multirun") for a in argv):
        raise ConfigError("resume= continues one run; it cannot be combined with -m/--multirun")
    saved = _saved_overrides(folder)
    trust.check_overrides(saved, allowed_targets(), folder)   # a folder may come from anyone
    merged = [*saved, *argv]
    last = {_key(a): i for i, a in enumerate(merged)}
    merged = [a for i, a in enumerate(merged) if a.startswith("-") or last[_key(a)] == i]
    if "hydra.run.dir" not in last:
        merged.append(f"hydra.run.dir={folder}")
    return merged


def _saved_overrides(folder: Path) -> list[str]:
    ckpt = folder / "checkpoints" / "last.pt"
    saved, source = None, ckpt
    if ckpt.is_file():
        saved = checkpoint.load(ckpt).get("overrides")
    hydra_file = folder / ".hydra" / "overrides.yaml"
    if saved is None and hydra_file.is_file():
        source = hydra_file
        try:
            saved = OmegaConf.to_container(OmegaConf.load(hydra_file))
        except Exception as e:
            raise CheckpointError(f"cannot read {hydra_file}: {str(e).strip().splitlines()[0][:200]}") from None
    if saved is None:
        return []
    if not isinstance(saved, list) or not all(isinstance(o, str) for o in saved):
        raise CheckpointError(f"{source}: the stored overrides are not a list of strings")
    return saved


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def checkpoint_path(cfg, run_dir: Path) -> Path | None:
    """The checkpoint this run continues from, or None for a fresh start."""
    value = cfg.get("resume")
    if value is not None and _disabled(value):
        return None
    if value is not None:
        path = Path(str(value)).expanduser() / "checkpoints" / "last.pt"
        if not path.is_file():
            raise CheckpointError(f"resume={value}: {path} not found (no epoch finished yet?)")
        return path
    path = Path(run_dir) / "checkpoints" / "last.pt"
    return path if path.is_file() else None


def check_same_config(saved: dict, current: dict, source: Path) -> None:
    """Exact resume needs the run's own config: refuse one that differs beyond MAY_CHANGE.
    Targets that moved since the run was saved count as the same (`build.upgrade`)."""
    a, b = _flat(upgrade(saved)), _flat(current)
    diff = _differing(a, b, MAY_CHANGE)
    if diff:
        k = diff[0]
        more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
        override = ADDED_LATER[k][1] if k not in a and k in ADDED_LATER else None
        hint = f"the run predates {k}: add {override}" if override else "give the run's own options"
        raise ConfigError(f"cannot resume from {source}: the config differs at {k} (checkpoint "
                          f"{a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r}){more}; {hint}, "
                          f"or resume=false to start over")


def differences(saved: dict, current: dict, may_change=()) -> list[str]:
    """Dotted keys where a saved config and the current one differ, beyond `may_change`; moved
    targets are the same, and an option added after the run was saved is the same when its value
    reproduces the run (ADDED_LATER)."""
    return _differing(_flat(upgrade(saved)), _flat(current), may_change)


def _differing(a: dict, b: dict, may_change=()) -> list[str]:
    """`differences` on flattened configs."""
    return [k for k in sorted(set(a) | set(b))
            if a.get(k, "<absent>") != b.get(k, "<absent>") and k not in SPEED_ONLY
            and not k.startswith(AFTER_TRAINING)
            and not (may_change and k.startswith(may_change))
            and not (k not in a and k in ADDED_LATER and ADDED_LATER[k][0](a, b[k]))]


def _flat(d) -> dict:
    """Every setting by its dotted key (lists and empty groups kept whole)."""
    return flatten(d, lists=True, empty=True)


def rng_state(gen: torch.Generator) -> dict:
    """Every random state the loop draws from, in types `weights_only` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(), "data": gen.get_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, gen: torch.Generator) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    gen.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(*, epoch, model, optimizer, scheduler, gen, frames, history, best, config,
                   overrides=(), partial=None, loss=None) -> dict:
    """A checkpoint's contents after `epoch` finished epochs. `partial` holds the progress of a
    stopped epoch (its data order, step and running sums), so it continues mid-epoch.
    `overrides` are the command-line overrides the run was composed from (for resume=).
    `loss`: the loss, whose terms may train state of their own (a critic and its optimiser)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "loss": loss.state_dict() if loss is not None else {},
            "scheduler": scheduler.state_dict(), "epoch": epoch, "rng": rng_state(gen),
            "config": config, "overrides": list(overrides), "history": history,
            "metrics": history[-1] if history else None, "best_val_loss": best,
            "frames": frames.state() if frames else None, "partial": partial}


def restore(state: dict, *, model, optimizer, scheduler, gen, frames, loss=None) -> tuple:
    """Load a checkpoint into the run's objects; return (finished epochs, metrics rows, best
    validation loss, partial epoch or None). RNGs last: building the run drew from them."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if loss is not None:    # checkpoints from before loss state have none: none was trained
            loss.load_state_dict(state.get("loss") or {})
        scheduler.load_state_dict(state["scheduler"])
        if frames and state.get("frames"):
            frames.load_state(state["frames"])
        restore_rng(state["rng"], gen)
        return state["epoch"], list(state["history"]), state["best_val_loss"], state.get("partial")
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint does not fit this run: {first}") from None


@dataclass
class EpochProgress:
    """Where an epoch stands: its data order, the next step, the running sums of the loss terms
    (on the device), samples seen, batches skipped, and the generator state its samples were
    drawn from. The one owner of the mid-epoch state: a signal-stopped epoch is saved from it
    into the checkpoint (`saved`) and continued from there (`begin`)."""
    perm: torch.Tensor
    drawn_from: torch.Tensor
    step: int = 0
    sums: dict = field(default_factory=dict)
    seen: int = 0
    skipped: int = 0

    @classmethod
    def begin(cls, saved: dict | None, data, gen: torch.Generator, device) -> "EpochProgress":
        """A new epoch: fresh samples (datasets drawn per epoch) and a new order from `gen`; or,
        for an epoch a signal stopped (`saved`, from a checkpoint), the same samples redrawn and
        its saved progress."""
        if saved is None:
            drawn_from = gen.get_state()
            data.new_epoch(gen)                 # fresh samples, for datasets drawn per epoch
            perm = torch.randperm(len(data.train), generator=gen).to(device, non_blocking=True)
            return cls(perm, drawn_from)
        now = gen.get_state()
        gen.set_state(saved["drawn_from"])
        data.new_epoch(gen)
        gen.set_state(now)
        return cls(saved["perm"].to(device), saved["drawn_from"], saved["step"],
                   {k: v.to(device) for k, v in saved["sums"].items()}, saved["seen"],
                   saved["skipped"])

    def add(self, terms: dict, batch: int, shard: int) -> None:
        """Count a trained batch: `batch` samples in all, `shard` of them on this process (the
        sums are added over processes at the epoch's end). No host sync."""
        self.seen += batch
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach() * shard

    def saved(self, step: int) -> dict:
        """The checkpoint form of this epoch stopped before `step`."""
        return {"step": step, "perm": self.perm.cpu(), "seen": self.seen, "skipped": self.skipped,
                "sums": {k: v.detach().cpu() for k, v in self.sums.items()},
                "drawn_from": self.drawn_from}
