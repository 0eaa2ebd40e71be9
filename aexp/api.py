"""The Python API, for notebooks: `aexp.compose`, `aexp.train`, `aexp.load_run`, `aexp.evaluate`
and `aexp.load_safetensors`. The package hands these out on first use (aexp/__init__.py), so
`import aexp` stays cheap. Each goes through what the CLI uses, nothing of its own: the same
config tree, the same job (aexp.jobs: check, lock, train, evaluate, mark finished), the same
run-folder reader with its trust check (aexp.assemble.load_run), the same evaluation."""
import contextlib
import json
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aexp import jobs, project
from aexp.assemble import LoadedRun, check_values, conf_dir
from aexp.assemble import load_run as build_load_run
from aexp.errors import ConfigError, one_line
from aexp.io import flatten, read_csv
from aexp.report import evaluate as report_evaluate
from aexp.report.export import read_safetensors
from aexp.trust import ENV as TRUST_ENV

# What each config from `compose` was composed from (by id, checked by identity), so a run
# trained from it keeps its overrides in its checkpoints and `aexp train resume=RUN_DIR` can
# recompose it, as it can a run the CLI started.
_COMPOSED: dict[int, tuple] = {}


def compose(overrides=()) -> DictConfig:
    """The run config `aexp train OVERRIDES` would compose, from the same config tree (the
    package's conf/, or $AEXP_CONF). No Hydra run is started, and Hydra's global state is left
    as it was found (cleared, or a notebook's own `hydra.initialize`), so later calls and a later
    `aexp train` in the same process work. A bad override raises ConfigError (one line). The
    open aexp project's conf/ (aexp.project) is searched beside aexp's own groups."""
    overrides = [str(o) for o in overrides]
    opened = project.activate()   # the open project's python on sys.path, its conf/ searched too
    searched = opened.searchpath_override() if opened else []
    hydra = GlobalHydra.instance()
    outer = hydra.hydra if hydra.is_initialized() else None
    hydra.clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=[*overrides, *searched])
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(one_line(e)) from None
    finally:   # the context restores what it found, but not when entering it failed
        hydra = GlobalHydra.instance()
        hydra.clear()
        if outer is not None:
            hydra.initialize(outer)
    for key in [k for k, (ref, _, _) in _COMPOSED.items() if ref() is None]:
        del _COMPOSED[key]
    _COMPOSED[id(cfg)] = (weakref.ref(cfg), overrides, _leaves(OmegaConf.to_container(cfg)))
    return cfg


def train(cfg: DictConfig, run_dir) -> dict:
    """Train `cfg` into `run_dir` as `aexp train` does (aexp.jobs: check the config, hold the
    folder, train or continue from its last checkpoint, evaluate when `eval.enabled`, mark it
    finished) and return the last metrics row. A folder already holding this finished run is not
    trained again: its final row is returned. Unlike the CLI, no `.hydra/` or `train.log`."""
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"aexp.train needs a config from aexp.compose(...), got {type(cfg).__name__}")
    return jobs.complete(cfg, Path(run_dir).expanduser(), overrides=overrides_of(cfg))


def overrides_of(cfg) -> list[str]:
    """The overrides `cfg` was composed from, plus `++key=value` for each setting changed in
    place since (notebooks edit configs: `cfg.train.epochs = 5`); [] for a config composed some
    other way, which `aexp train resume=` then cannot recompose (the API resumes it: call
    `aexp.train` again with the same config)."""
    ref, overrides, then = _COMPOSED.get(id(cfg), (lambda: None, [], {}))
    if ref() is not cfg:
        return []
    now = _leaves(OmegaConf.to_container(cfg))
    return overrides + [f"++{k}={json.dumps(v)}" for k, v in now.items() if k not in then or then[k] != v]


def _leaves(node) -> dict:
    """{'model.hidden': [16], ...}: every setting by its dotted key (lists kept whole)."""
    return flatten(node, lists=True, empty=True)


@dataclass
class Run(LoadedRun):
    """A run folder rebuilt from a checkpoint (aexp.assemble.LoadedRun: `.model` in eval mode,
    `.data` with its splits, `.cfg`, `.state`, `.loss_fn`, `.device`), plus which checkpoint it
    is and its metrics."""
    checkpoint: str = "best"

    @property
    def metrics(self):
        """metrics.csv: a pandas DataFrame when pandas is installed, else a list of row dicts."""
        path = self.run_dir / "metrics.csv"
        rows = read_csv(path) if path.is_file() else []
        try:
            import pandas
        except ImportError:
            return rows
        return pandas.DataFrame(rows)


def load_run(run_dir, checkpoint: str = "best", device: str = "cpu", trust: bool = False) -> Run:
    """Rebuild a run from `RUN_DIR/checkpoints/CHECKPOINT.pt` (`best` or `last`). A stored config
    naming a target outside aexp's own and outside the open project's `trust` list (its
    aexp.yaml) is refused unless `trust=True` (as `--trust`)."""
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"checkpoint must be best or last, got {checkpoint!r}")
    project.activate()   # a run of the open project names its classes: importable, trusted
    with trusting(trust):
        loaded = build_load_run(Path(run_dir).expanduser(), which=checkpoint, device=device)
    return Run(**vars(loaded), checkpoint=checkpoint)


def evaluate(run: LoadedRun, **settings) -> dict:
    """Evaluate a loaded run on its test split as `aexp eval` does: writes RUN_DIR/eval.json (and
    the pictures unless pictures=False) and returns eval.json's dict. `settings` are fields of
    the `eval:` section of conf/config.yaml: nll_samples=100, classifier={"enabled": False}."""
    known = report_evaluate.settings()
    unknown = sorted(k for k in settings if k not in known or k == "checkpoint")
    if unknown:
        raise ConfigError(f"unknown eval setting {', '.join(unknown)} (known: "
                          f"{', '.join(k for k in known if k != 'checkpoint')}; the checkpoint is "
                          f"chosen by aexp.load_run)")
    ev = report_evaluate.settings(run.cfg, checkpoint=getattr(run, "checkpoint", None), **settings)
    check_values(OmegaConf.create({"eval": ev}))
    return report_evaluate.evaluate(run, ev, log=print, pictures=bool(ev.pictures))


def load_safetensors(path, device: str = "cpu", trust: bool = False):
    """The model of an `aexp export --format safetensors` file, in eval mode: rebuilt from the
    config in its metadata (the same trust check as a run folder), then every tensor loaded."""
    project.activate()
    with trusting(trust):
        return read_safetensors(Path(path).expanduser(), device=device)


@contextlib.contextmanager
def trusting(on: bool):
    """trust=True: what `--trust` does on the command line, for this call only."""
    before = os.environ.get(TRUST_ENV)
    if on:
        os.environ[TRUST_ENV] = "1"
    try:
        yield
    finally:
        if on and before is None:
            del os.environ[TRUST_ENV]
        elif on:
            os.environ[TRUST_ENV] = before
