"""Config -> objects, the only place: where the config tree is, every value check (before any
data is loaded), building the five groups (`build`, `build_parts`, `build_schedule`), the device,
seeding, and `load_run`, which rebuilds a finished run from its folder.

The run's own settings (seed, device, train.*, frames.*, eval.*, ...) are checked against the
defaults in `conf/config.yaml`: an unknown key, a value of another type than its default, a value
below its minimum or outside its documented choices is refused with one line (ConfigError).
Group options (model, loss, dataset, optimizer, schedule) are checked by building them: their
constructors refuse what they cannot take. The config tree and the value checks live in
`aexp.assemble.config` and are re-exported here."""
import inspect
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from aexp import checkpoint, trust
from aexp.assemble.config import (AUTO, CHOICES, EVAL_NUMBERS, EVAL_SECTIONS, KINDS, MINIMUM,
                               check_config, check_objective, check_values, conf_dir, defaults,
                               resolve_device)
from aexp.errors import AexpError, CheckpointError, ConfigError, unwrap
from aexp.models import cost, layout

__all__ = ["AUTO", "CHOICES", "EVAL_NUMBERS", "EVAL_SECTIONS", "KINDS", "MINIMUM", "LoadedRun",
           "allowed_targets", "build", "build_loss", "build_model", "build_parts", "build_schedule", "check_config",
           "check_objective", "check_values", "code_size", "conf_dir", "defaults", "load_run",
           "resolve_device", "seed_everything", "upgrade"]


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


def build_loss(node, data_size: int | None = None, code_size: int | None = None,
               channels: int | None = None):
    """The loss. Terms that need more than their config get it here: a perceptual term taking
    its features from another run (`features_run`) gets that run's model, a term whose
    `dataset_size` is left null gets the training split's size (`data_size`), one whose
    `code_size` is left null the model's flattened code size (`code_size`), one whose `channels`
    is left null the target images' channels (`channels`), and a term with an
    `optimizer` of its own (a critic, aexp.losses.adversarial) gets it unbuilt, as a function of
    the parameters it will step."""
    terms = node.get("terms") or {}
    extra = {}
    for name, t in terms.items():
        if not isinstance(t, DictConfig):
            continue
        mine = extra.setdefault(name, {})
        if t.get("features_run"):
            mine["run_model"] = load_run(t.features_run, "best", device="cpu").model
        elif "dataset_size" in t and t.dataset_size is None and data_size:
            mine["dataset_size"] = data_size
        if "code_size" in t and t.code_size is None and code_size:
            mine["code_size"] = code_size
        if "channels" in t and t.channels is None and channels:
            mine["channels"] = channels
        if isinstance(t.get("optimizer"), DictConfig):
            mine["optimizer"] = build(t.optimizer, _partial_=True)
    if not any(extra.values()):
        return build(node)
    built = {name: build(t, **extra.get(name, {})) for name, t in terms.items()}
    rest = {k: v for k, v in node.items() if k not in ("_target_", "terms")}
    return build(OmegaConf.create({"_target_": node._target_}), terms=built, **rest)


def code_size(model, x) -> int:
    """The model's code size per sample (flattened), from one forward pass in eval mode (a VAE
    then gives its mean: no random draw)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x).z[0].numel()
    finally:
        model.train(was)


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


def build_model(node, data):
    """The model for `data`'s shapes; a conditional one (`conditional = True` on its class,
    aexp.models.base) also gets the number of classes, and is refused on unlabelled data."""
    try:
        conditional = getattr(get_class(node["_target_"]), "conditional", False) is True
    except Exception:   # not found or not importable: `build` says so in its own words
        conditional = False
    if conditional and not data.num_classes:
        raise ConfigError(f"model {node._target_.rsplit('.', 1)[-1]} is conditional and needs class "
                          f"labels, but dataset {data.name} has none; pick a labelled dataset "
                          f"(e.g. dataset=digits)")
    classes = {"num_classes": data.num_classes} if conditional else {}
    return build(node, in_shape=data.in_shape, out_shape=data.out_shape, **classes)


def build_parts(cfg, device) -> tuple:
    """Data (resident on `device`, with the run's task and corruption), model and loss of a
    run config: what training, evaluation and every command that loads a finished run share."""
    data = build(cfg.dataset).prepare(build(cfg.task), build(cfg.corruption)).to(device)
    model = build_model(cfg.model, data).to(device)
    x, _ = data.batch(data.train, torch.arange(min(1, len(data.train)), device=data.train.x.device))
    if cost.channels_last(cfg.train.get("channels_last", "auto"), model, device, x):
        model = layout.channels_last(model)   # when it pays: aexp.models.cost
    needs_code = any(isinstance(t, DictConfig) and "code_size" in t and t.code_size is None
                     for t in (cfg.loss.get("terms") or {}).values())
    loss = build_loss(cfg.loss, data_size=len(data.train),
                      code_size=code_size(model, x) if needs_code else None,
                      channels=data.out_shape[0] if len(data.out_shape) == 3 else None)
    return data, model, loss.to(device)


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
    """Rebuild a run from `RUN_DIR/checkpoints/WHICH.pt` (`best` or `last`); the model is in eval mode."""
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
    try:    # the loss's own trained state (a critic's weights), for its terms' values
        loss_fn.load_state_dict(state.get("loss") or {})
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{run_dir}: the checkpoint's loss state does not fit its loss: "
                              f"{str(e).strip().splitlines()[0][:200]}") from None
    for term in getattr(loss_fn, "terms", {}).values():   # a term that is the model's prior (VampPrior)
        if hasattr(term, "bind_prior"):
            term.bind_prior(model)
    model.eval()
    model.start_epoch(None)
    return LoadedRun(run_dir, cfg, state, data, model, loss_fn, dev)
