"""Config checks before any work. The run's own settings (seed, device, train.*, frames.*, ...)
are checked against the defaults in `conf/config.yaml`: an unknown key, a value of another type
than its default, or an impossible value is refused with one line (ConfigError). Group options
(model, loss, dataset, optimizer, schedule) are checked by building them: their constructors
refuse what they cannot take."""
import difflib
from functools import lru_cache

from omegaconf import OmegaConf

from aexp.errors import ConfigError
from aexp.paths import conf_dir

# Smallest allowed value of numeric settings (a key missing from the config is skipped).
MINIMUM = {
    "train.epochs": 1,
    "train.batch_size": 1,
    "train.eval_batch_size": 1,
    "frames.every": 1,
    "frames.probe_size": 1,
    "frames.size": 16,
    "train.threads": 1,
}

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


def check(cfg) -> None:
    own, groups = defaults()
    values = OmegaConf.to_container(cfg, resolve=True)
    _walk(values, own, "", skip=groups)
    for key, low in MINIMUM.items():
        v = OmegaConf.select(cfg, key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < low:
            raise ConfigError(f"{key} must be at least {low}, got {v}")
    lr = OmegaConf.select(cfg, "optimizer.lr")
    if isinstance(lr, str) or (isinstance(lr, (int, float)) and lr <= 0):
        raise ConfigError(f"optimizer.lr must be a positive number, got {lr!r}")


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
        if isinstance(default, dict):
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
