"""What every tracker builds on: the `Tracker` interface, what a tracker knows of the run it
follows (`RunInfo`, read from the run folder), and the one-line refusal of a tracker whose
package is missing. No torch here: `aexp render` hands its video to MLflow through this."""
from pathlib import Path

from omegaconf import OmegaConf

from aexp.errors import ConfigError
from aexp.io import flatten

EXTRA = "pip install 'aexp[tracking]'"


def need(package: str, tracker: str):
    """Import `package` for `tracker`, or refuse the run now in one line naming the extra."""
    import importlib
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"logger {tracker} needs the {package.split('.')[0]} package: {EXTRA}") from None


class RunInfo:
    """What a tracker knows of the run it follows, from the run folder: its config, where the
    run stands, and (from .hydra/hydra.yaml, when Hydra started it) the group choices and, for a
    job of a multirun, the sweep folder and job number."""

    def __init__(self, run_dir: Path, config: dict, rows: list[dict], epoch: int, step: int):
        self.run_dir, self.config, self.rows = Path(run_dir), config, rows
        self.epoch, self.step = epoch, step      # the restored position: epochs and steps done
        hydra = _hydra_record(self.run_dir)
        self.choices = dict(hydra.get("runtime", {}).get("choices") or {})
        self.multirun = hydra.get("mode") == "MULTIRUN"
        # a job folder is <sweep dir>/<job number> (hydra.sweep.subdir's default)
        self.sweep_dir = self.run_dir.resolve().parent if self.multirun else None
        self.job_num = hydra.get("job", {}).get("num") if self.multirun else None
        self.name = f"{self.sweep_dir.name}/{self.run_dir.name}" if self.multirun else self.run_dir.name

    def settings(self) -> dict:
        """The config as a tracker's params: flat dotted keys (lists kept), without `logger.*`,
        which says where the numbers go, not how they were made."""
        return flatten({k: v for k, v in self.config.items() if k != "logger"}, lists=True)

    def experiment(self) -> str:
        """A name for the run's family: the preset's (+experiment=NAME), else the dataset's."""
        if self.choices.get("experiment"):
            return str(self.choices["experiment"])
        if self.choices.get("dataset"):
            return str(self.choices["dataset"])
        return str(self.config.get("dataset", {}).get("_target_", "aexp")).rsplit(".", 1)[-1]

    def frame(self, epoch: int) -> Path | None:
        path = self.run_dir / "frames" / f"epoch_{epoch:04d}.png"
        return path if path.is_file() else None


def _hydra_record(run_dir: Path) -> dict:
    path = run_dir / ".hydra" / "hydra.yaml"
    try:   # read as plain data: the values used here are never interpolations
        return OmegaConf.to_container(OmegaConf.load(path)).get("hydra", {}) if path.is_file() else {}
    except Exception:
        return {}


class Tracker:
    """One destination. `start` opens its run, or reopens the one `state` names (its entry of
    trackers.json, empty for a new run, which it fills in: run ids), and returns the last epoch
    that run already holds; the other methods log."""
    every_steps = 0          # wants the training loss every N optimiser steps (0: never)

    def start(self, run: RunInfo, state: dict) -> int:
        return run.epoch

    def log_step(self, step: int, loss: float) -> None:
        pass

    def log_epoch(self, row: dict, frame: Path | None) -> None:
        pass

    def finish(self, run: RunInfo, report: dict, pictures: list[Path], final: dict) -> None:
        pass

    def close(self, status: str) -> None:
        """status: FINISHED, KILLED (stopped by a signal, to be resumed) or FAILED."""


class CSV(Tracker):
    """metrics.csv. The training loop writes it itself, always (resume, `aexp summary` and sweep
    objectives read it); `csv` in the logger list names it, and needs nothing."""
