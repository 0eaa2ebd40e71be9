"""Config -> objects, the only place: where the config tree is, every value check (before any
data is loaded), building the five groups (`build`, `build_parts`, `build_schedule`), the device,
seeding, and `load_run`, which rebuilds a finished run from its folder.

The run's own settings (seed, device, train.*, frames.*, eval.*, ...) are checked against the
defaults in `conf/config.yaml`: an unknown key, a value of another type than its default, a value
below its minimum or outside its documented choices is refused with one line (ConfigError).
Group options (model, loss, dataset, optimizer, schedule) are checked by building them: their
constructors refuse what they cannot take."""
import difflib
import inspect
import math
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from aexp import checkpoint, trust
from aexp.errors import AexpError, CheckpointError, ConfigError, unwrap
from aexp.models import cost


def conf_dir() -> Path:
    """`$AEXP_CONF` if set, else the `conf/` folder beside the package (checkout or editable install)."""
    env = os.environ.get("AEXP_CONF")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent.parent / "conf")
    for c in candidates:
        if (c / "config.yaml").is_file():
            return c
    raise ConfigError("cannot find the config tree (conf/config.yaml); set AEXP_CONF to its folder")


# Smallest allowed value of numeric settings (a key missing from the config is skipped).
MINIMUM = {
    "train.epochs": 1, "train.batch_size": 1, "train.eval_batch_size": 1, "train.threads": 1,
    "train.max_steps": 1, "frames.every": 1, "frames.probe_size": 1, "frames.size": 16,
    "eval.batch_size": 1, "eval.nll_samples": 0, "eval.nll_max_images": 0, "eval.nll_batch": 1,
    "eval.tsne_points": 1, "eval.classifier.epochs": 1, "eval.inception_max_images": 2,
    "lr_find.steps": 10,
}
# Settings with a fixed set of values.
CHOICES = {
    "train.precision": ("auto", "fp32", "bf16"),
    "eval.checkpoint": ("best", "last"),
    "eval.likelihood": ("bernoulli", "gaussian"),
    "objective.reduce": ("last", "min", "max"),
}
AUTO = {"train.threads": (1, True, "auto, an integer or null"),       # auto or a value of another kind:
        "train.channels_last": (True, False, "auto, true or false")}  # (such a value, null too?, words)
KINDS = ((bool, "true or false"), (int, "an integer"), (float, "a number"), (str, "a string"),
         (list, "a list"))


@lru_cache(maxsize=1)
def defaults() -> tuple[dict, frozenset]:
    """(the run's own settings with their defaults, names of the config groups)."""
    raw = OmegaConf.to_container(OmegaConf.load(conf_dir() / "config.yaml"))
    # defaults entries look like {"model": "linear"}, {"optional experiment": ...}, {"a/b@pkg": ...}
    groups = {next(iter(d)).split()[-1].split("@")[0].split("/")[-1]
              for d in raw.pop("defaults", []) if isinstance(d, dict)}
    raw.pop("hydra", None)
    return raw, frozenset(groups)


def check_config(cfg) -> None:
    """Every value check that needs no data: run first, so a bad value costs no work."""
    own, groups = defaults()
    _walk(OmegaConf.to_container(cfg, resolve=True), own, "", skip=groups)
    check_values(cfg)
    for key in ("optimizer.lr", "train.grad_clip"):
        v = OmegaConf.select(cfg, key)
        if v is not None and (isinstance(v, (str, bool)) or not math.isfinite(v) or v <= 0):
            raise ConfigError(f"{key} must be a positive number{' (or null)' if 'clip' in key else ''}, "
                              f"got {v!r}")
    start, end = OmegaConf.select(cfg, "lr_find.start"), OmegaConf.select(cfg, "lr_find.end")
    if start is not None and end is not None and not 0 < start < end:
        raise ConfigError(f"lr_find needs 0 < start < end, got start={start}, end={end}")
    stop, smoothing = OmegaConf.select(cfg, "lr_find.stop_factor"), OmegaConf.select(cfg, "lr_find.smoothing")
    if stop is not None and not stop > 1:
        raise ConfigError(f"lr_find.stop_factor must be above 1, got {stop}")
    if smoothing is not None and not 0 <= smoothing < 1:
        raise ConfigError(f"lr_find.smoothing must be in [0, 1), got {smoothing}")
    check_objective(cfg)
    for stage in OmegaConf.select(cfg, "train.progressive") or ():
        epochs = stage.get("epochs") if isinstance(stage, DictConfig) else None
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1 or stage.get("size") is None:
            raise ConfigError(f"train.progressive stages need a size and epochs >= 1, got {stage}")
    resolve_device(str(cfg.device))


# eval.json's sections and top-level numbers: what objective.metric may name besides a column
EVAL_SECTIONS = ("reconstruction.", "latent.", "vae.", "colorization.", "classifier.", "quality.",
                 "inception.", "codebook.")
EVAL_NUMBERS = ("epoch", "n_test", "parameters", "train_seconds", "eval_seconds")


def check_objective(cfg) -> None:
    """objective.metric must be a metrics.csv column this run will write (its loss terms decide
    them) or, when the run is evaluated, a number of eval.json: a typo is refused now, not after
    the whole run trained."""
    metric = OmegaConf.select(cfg, "objective.metric")
    if metric is None:
        return
    terms = ["loss", *(OmegaConf.select(cfg, "loss.terms") or {})]
    columns = ["epoch", "lr", "seconds", "train_seconds", "frame_seconds", "skipped_batches",
               *(f"{split}_{t}" for split in ("train", "val") for t in terms)]
    evaluated = bool(OmegaConf.select(cfg, "eval.enabled"))
    parts = any(metric.startswith(f"{split}_{t}_") for split in ("train", "val") for t in terms)
    if metric in columns or parts or (evaluated and (metric.startswith(EVAL_SECTIONS) or metric in EVAL_NUMBERS)):
        return
    more = f", or an eval.json number ({', '.join(s + '*' for s in EVAL_SECTIONS)})" if evaluated else ""
    raise ConfigError(f"objective.metric={metric} is not a metrics.csv column of this run "
                      f"({', '.join(columns)}){more}")


def check_values(cfg) -> None:
    """The minimums and choices of the settings `cfg` holds: a run config, or a part of one
    (`aexp eval`'s options as {"eval": ...})."""
    for key, low in MINIMUM.items():
        v = OmegaConf.select(cfg, key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < low:
            raise ConfigError(f"{key} must be at least {low}, got {v}")
    for key, allowed in CHOICES.items():
        v = OmegaConf.select(cfg, key)
        if v is not None and v not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {v!r}")
    weights = OmegaConf.select(cfg, "eval.inception_weights")   # before training, not after it
    if weights and not Path(str(weights)).expanduser().is_file():
        raise ConfigError(f"eval.inception_weights: no such file {weights}")


def _walk(values: dict, spec: dict, prefix: str, skip=()) -> None:
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key in skip:
            continue
        if key not in spec:
            close = difflib.get_close_matches(key, list(spec), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {name}{hint}")
        default = spec[key]
        if name in AUTO:
            kind, nullable, text = AUTO[name]
            if value != "auto" and not (nullable and value is None) and not _same_kind(value, kind):
                raise ConfigError(f"{name} must be {text}, got {value!r}")
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{name} must be a group of settings, got {value!r}")
            _walk(value, default, f"{name}.")
        elif default is not None and not _same_kind(value, default):
            want = next(text for t, text in KINDS if isinstance(default, t))
            raise ConfigError(f"{name} must be {want}, got {value!r}")


def _same_kind(value, default) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    for t in (int, str, list):
        if isinstance(default, t):
            return isinstance(value, t)
    return True


def resolve_device(name: str) -> torch.device:
    """`auto` = the current CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} asked for, but no CUDA device is available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build(node, **kwargs):
    """`hydra.utils.instantiate`, with our own errors unwrapped from Hydra's wrapper."""
    try:
        return instantiate(node, **kwargs)
    except Exception as e:
        inner = unwrap(e)
        if isinstance(inner, AexpError):
            raise inner from None
        # Hydra's message is "Error in call to target '...':" with the reason on the next lines
        text = " ".join(str(e).split())[:400] or type(e).__name__
        raise ConfigError(f"cannot build {node.get('_target_', '?')}: {text}") from None


def build_loss(node, data_size: int | None = None):
    """The loss. Terms that need more than their config get it here: a perceptual term taking
    its features from another run (`features_run`) gets that run's model, a term whose
    `dataset_size` is left null gets the training split's size (`data_size`)."""
    terms = node.get("terms") or {}
    extra = {}
    for name, t in terms.items():
        if isinstance(t, DictConfig) and t.get("features_run"):
            extra[name] = {"run_model": load_run(t.features_run, "best", device="cpu").model}
        elif isinstance(t, DictConfig) and "dataset_size" in t and t.dataset_size is None and data_size:
            extra[name] = {"dataset_size": data_size}
    if not extra:
        return build(node)
    built = {name: build(t, **extra.get(name, {})) for name, t in terms.items()}
    rest = {k: v for k, v in node.items() if k not in ("_target_", "terms")}
    return build(OmegaConf.create({"_target_": node._target_}), terms=built, **rest)


def build_schedule(node, optimizer, total_steps: int):
    """Instantiate `cfg.schedule`, passing `total_steps` to targets that take it (the per-batch
    schedules, whose length depends on the data size, batch size and epochs)."""
    try:
        target = get_class(node["_target_"])
    except Exception as e:
        raise ConfigError(f"schedule: cannot find {node.get('_target_')}: {str(e).splitlines()[0]}") from None
    takes_steps = "total_steps" in inspect.signature(target.__init__).parameters
    extra = {"total_steps": total_steps} if takes_steps and "total_steps" not in node else {}
    return build(node, optimizer=optimizer, **extra)


def build_parts(cfg, device) -> tuple:
    """Data (resident on `device`, with the run's task and corruption), model and loss of a
    run config: what training, evaluation and every command that loads a finished run share."""
    data = build(cfg.dataset).prepare(build(cfg.task), build(cfg.corruption)).to(device)
    model = build(cfg.model, in_shape=data.in_shape, out_shape=data.out_shape).to(device)
    x, _ = data.batch(data.train, torch.arange(min(1, len(data.train)), device=data.train.x.device))
    if cost.channels_last(cfg.train.get("channels_last", "auto"), model, device, x):
        model = model.to(memory_format=torch.channels_last)   # when it pays: aexp.models.cost
    return data, model, build_loss(cfg.loss, data_size=len(data.train))


def allowed_targets() -> frozenset:
    """What a stored config may name: every target of the config tree (see aexp.trust)."""
    return trust.allowed_targets(conf_dir())


# Targets that moved since runs were saved: old prefix -> new prefix (stored configs name them).
MOVED = {
    "aexp.tasks.": "aexp.data.tasks.",
    "aexp.corruption.": "aexp.data.corruption.",
    "aexp.schedules.": "aexp.run.schedules.",
    "aexp.losses.ColourTriplet": "aexp.losses.ColorTriplet",
}


def upgrade(config):
    """A stored config (plain dict) with moved `_target_`s renamed to where they live now."""
    if isinstance(config, dict):
        out = {k: upgrade(v) for k, v in config.items()}
        target = out.get("_target_")
        if isinstance(target, str):
            for old, new in MOVED.items():
                if target.startswith(old):
                    out["_target_"] = new + target[len(old):]
        return out
    return [upgrade(v) for v in config] if isinstance(config, list) else config


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: object          # the run's resolved config (DictConfig)
    state: dict          # the checkpoint
    data: object
    model: object
    loss_fn: object
    device: object


def load_run(run_dir, which: str = "best", device: str = "auto") -> LoadedRun:
    """Rebuild a run from `RUN_DIR/checkpoints/<which>.pt`; the model is in eval mode."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AexpError(f"no such run folder: {run_dir}")
    path = run_dir / "checkpoints" / f"{which}.pt"
    state = checkpoint.load(path)
    config = upgrade(state.get("config"))
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds no run config")
    trust.check_config(config, allowed_targets(), path)   # before anything is imported or built
    cfg = OmegaConf.create(config)
    dev = resolve_device(device)
    data, model, loss_fn = build_parts(cfg, dev)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:   # a checkpoint whose weights are not this model's
        raise CheckpointError(f"{run_dir}: the checkpoint's weights do not fit its model: "
                              f"{str(e).strip().splitlines()[0][:200]}") from None
    model.eval()
    model.start_epoch(None)
    return LoadedRun(run_dir, cfg, state, data, model, loss_fn, dev)
