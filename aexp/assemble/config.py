"""Where the config tree is, and every value check that needs no data (run before anything is
loaded): the run's own settings (seed, device, train.*, frames.*, eval.*, ...) against the
defaults in `conf/config.yaml` (an unknown key, a value of another type than its default, a value
below its minimum or outside its documented choices is refused with one line, ConfigError), the
objective a sweep optimises, and the device. Re-exported by `aexp.assemble`."""
import difflib
import math
import os
from functools import lru_cache
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from aexp.errors import ConfigError


def conf_dir() -> Path:
    """`$AEXP_CONF` if set, else the `conf/` folder beside the package (checkout or editable install)."""
    env = os.environ.get("AEXP_CONF")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "conf")
    for c in candidates:
        if (c / "config.yaml").is_file():
            return c
    raise ConfigError("cannot find the config tree (conf/config.yaml); set AEXP_CONF to its folder")


# Smallest allowed value of numeric settings (a key missing from the config is skipped).
MINIMUM = {
    "train.epochs": 1, "train.batch_size": 1, "train.eval_batch_size": 1, "train.threads": 1,
    "train.max_steps": 1, "frames.every": 1, "frames.probe_size": 1, "frames.size": 16,
    "eval.batch_size": 1, "eval.nll_samples": 0, "eval.nll_max_images": 0, "eval.nll_batch": 1,
    "eval.nll_repeats": 1,
    "eval.tsne_points": 1, "eval.classifier.epochs": 1, "eval.inception_max_images": 2,
    "eval.disentanglement.points": 20, "eval.disentanglement.bins": 2,
    "eval.disentanglement.dci_trees": 1, "eval.disentanglement.votes_train": 2,
    "eval.disentanglement.votes_eval": 1, "eval.disentanglement.batch": 2,
    "eval.sampler_images": 2, "eval.pr_k": 1, "lr_find.steps": 10,
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
                 "inception.", "codebook.", "samplers.")
EVAL_SECTIONS += ("disentanglement.",)   # data made from known factors (report/factors.py)
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
    for name in OmegaConf.select(cfg, "eval.samplers") or ():   # conf/sampler/ names them
        if name not in ("prior", "vamp") and not (conf_dir() / "sampler" / f"{name}.yaml").is_file():
            raise ConfigError(f"eval.samplers: unknown sampler {name!r} (conf/sampler/*.yaml, prior)")
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
