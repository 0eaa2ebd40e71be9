"""The trust boundary for run folders from anyone. A checkpoint loads with `weights_only=True`,
but its stored config (and a folder's overrides) would be instantiated too: a `_target_` there
can name any callable (`torch.load` of a pickle, `os.system`, `numpy.savetxt`). So what is
rebuilt from a run folder may name only the targets aexp's own config tree names (its classes,
and the optimizer and scheduler classes its groups name); anything else is refused before it is
imported, in one line naming the key and the target. A run made with a user's own class is
opened with `--trust` (or AEXP_TRUST=1), which the refusal names, or without it from a user
project (aexp.project) that declares the class's package in its aexp.yaml `trust` list: trust
by declaration, for run folders opened from that project only.

The command line of `aexp train` itself is the user's own: this applies to stored configs only."""
import os
import re
from functools import lru_cache
from pathlib import Path

from aexp import project
from aexp.errors import ConfigError

ENV = "AEXP_TRUST"
HINT = (f"open it anyway only if you trust where the folder came from: add --trust "
        f"({ENV}=1 for scripts), or list its package under trust: in your project's aexp.yaml")


def trusted() -> bool:
    return os.environ.get(ENV, "").lower() in ("1", "true", "yes")


def allows(target: str, allowed: frozenset) -> bool:
    """The one decision: `target` is one of aexp's own (`allowed`) or lies under a prefix the
    open project declares (its aexp.yaml `trust`)."""
    if target in allowed:
        return True
    opened = project.current()   # (its aexp.yaml read only when a target is not aexp's own)
    return bool(opened and opened.trusts(target))


def _not_ours() -> str:
    """What the refusal says beside the hint: which project's list was consulted, if any."""
    opened = project.current()
    return (f"nor under the trust list of the open project {opened.root / project.FILE}"
            if opened else "and no aexp project is open (aexp.yaml; if your project made this run, "
            "open it: --project DIR)")


@lru_cache(maxsize=4)
def allowed_targets(conf: Path) -> frozenset:
    """Every `_target_` named by a YAML file of the config tree `conf`."""
    found = set()
    for path in Path(conf).rglob("*.yaml"):
        found.update(re.findall(r"^\s*_target_:\s*([\w.]+)\s*(?:#.*)?$", path.read_text(), re.M))
    return frozenset(found)


def check_config(config, allowed: frozenset, source) -> None:
    """Refuse a stored config (plain dict) naming a target outside `allowed`, or holding an
    interpolation (`${oc.decode:...}` could make a target when resolved; a saved config is
    stored resolved, so it has none), unless trusted."""
    if trusted():
        return
    for key, target in _targets(config, ""):
        if not allows(target, allowed):
            raise ConfigError(f"{source}: {key} names {target!r}, which is not one of aexp's own "
                              f"targets {_not_ours()}; {HINT}")
    for key, value in _leaves(config, ""):
        if isinstance(value, str) and "${" in value:
            raise ConfigError(f"{source}: {key} holds an interpolation ({value[:60]!r}), which a "
                              f"saved config never does; {HINT}")


def check_overrides(overrides, allowed: frozenset, source) -> None:
    """Refuse stored command-line overrides that reach into Hydra itself (callbacks, launchers,
    logging: code Hydra would run) or set a target outside `allowed`, unless trusted."""
    if trusted():
        return
    for override in overrides:
        text = str(override)
        key, _, value = text.partition("=")
        key = key.lstrip("+~")
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            raise ConfigError(f"{source}: the stored override {text!r} sets Hydra's own options; {HINT}")
        if key.split(".")[-1] == "_target_" and not allows(value.strip(), allowed):
            raise ConfigError(f"{source}: the stored override {text!r} names a target that is not "
                              f"one of aexp's own; {HINT}")
        if "_target_" in value or "${" in value:   # a dict carrying a target; a resolver
            raise ConfigError(f"{source}: the stored override {text!r} carries a target or an "
                              f"interpolation; {HINT}")


def _leaves(node, prefix: str):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), node


def _targets(node, prefix: str):
    if isinstance(node, dict):
        for k, v in node.items():
            where = f"{prefix}{k}"
            if k == "_target_":
                yield where, str(v)
            else:
                yield from _targets(v, where + ".")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _targets(v, f"{prefix}{i}.")
