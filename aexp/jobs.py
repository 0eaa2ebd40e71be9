"""One job of a run or sweep, the layer above `run/` and `report/`: check the config, skip the job
when its folder already holds the finished run (so re-running a multirun only does the unfinished
jobs), pin it to a GPU when several jobs share a multi-GPU machine, train (`run.train`), evaluate
the run folder (`report.evaluate`, when `eval.enabled`), mark it finished, and return the value a
sweeper (Optuna) optimises."""
import contextlib
import json
from pathlib import Path

from omegaconf import OmegaConf
from rich.markup import escape

from aexp.assemble import check_config, load_run
from aexp.errors import AexpError, ConfigError
from aexp.io import FINISHED_MARKER, atomic_write, flatten, folder_lock, read_csv
from aexp.report import evaluate
from aexp.run import distributed, resume
from aexp.run.trackers.group import Trackers
from aexp.run.train import console, train

MARKER = FINISHED_MARKER
# Keys that say how to run, not what is computed: a finished run stays finished when they change.
IGNORED = ("resume", "device", "objective", "logger")


def _comparable(cfg) -> dict:
    config = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in config.items() if k not in IGNORED}


def finished(cfg, run_dir: Path) -> dict | None:
    """The completion record of `run_dir` when it holds this config's finished run, else None.
    A finished run of another config is refused: training over it would destroy it."""
    path = Path(run_dir) / MARKER
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        then = record["config"]
        if not isinstance(then, dict):
            raise TypeError(then)
    except (ValueError, KeyError, TypeError, OSError):   # empty or cut: written by no finished run
        console.print(f"[yellow]aexp: warning: {path} is unreadable; the run counts as not finished[/]",
                      soft_wrap=True)
        path.unlink(missing_ok=True)
        return None
    now = _comparable(cfg)
    before = then.get("train", {}).get("epochs") if isinstance(then.get("train"), dict) else None
    longer = isinstance(before, int) and now["train"]["epochs"] > before
    if longer and not resume.differences(then, now, ("train.epochs",)):
        path.unlink()   # the same run asked to go on for more epochs: not finished any more
        return None
    if resume.differences(then, now):   # (an option added since, at the run's value, is no change)
        raise ConfigError(f"{run_dir} already holds a finished run of a different config; "
                          f"choose another output folder (hydra.run.dir / hydra.sweep.dir)")
    return record


def mark_finished(cfg, run_dir: Path, row: dict) -> None:
    """Write the completion marker (last, atomically: its presence means the run is whole)."""
    record = {"config": _comparable(cfg), "final": row}
    atomic_write(Path(run_dir) / MARKER, lambda f: f.write(json.dumps(record, indent=1).encode()))
    (Path(run_dir) / "FAILED").unlink(missing_ok=True)


def objective(cfg, run_dir: Path) -> float:
    """`objective.metric` of the finished run: a `metrics.csv` column (its value at the final epoch,
    or its min/max over epochs with `objective.reduce`), else a key of `eval.json`."""
    name, reduce = cfg.objective.metric, cfg.objective.get("reduce", "last")
    rows = read_csv(Path(run_dir) / "metrics.csv")
    if rows and name in rows[0]:
        values = [r[name] for r in rows if isinstance(r[name], (int, float))]
        pick = {"last": lambda v: v[-1], "min": min, "max": max}   # checked by build.check_config
        return float(pick[reduce](values))
    evaluation = Path(run_dir) / "eval.json"
    # eval.json nests its sections; the objective names a leaf by its dotted path
    scores = flatten(json.loads(evaluation.read_text())) if evaluation.is_file() else {}
    if name in scores:
        return float(scores[name])
    known = sorted(set(rows[0] if rows else []) | set(scores))
    raise ConfigError(f"objective.metric={name} is neither a metrics.csv column nor an eval.json "
                      f"key of {run_dir} (known: {', '.join(known)})")


def pin_gpu(job_num: int) -> None:
    """Jobs launched side by side on one machine (joblib) each take GPU job_num mod #GPUs, so
    `device=auto` (which means the current CUDA device) spreads a sweep over every GPU."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 1 and not distributed.active():
        torch.cuda.set_device(job_num % torch.cuda.device_count())


def run_job(cfg, run_dir: Path, job_num: int | None = None, overrides: list[str] = ()) -> float:
    """Train `cfg` into `run_dir` unless it already finished there; return the objective.
    `overrides` (the command line's) are kept in checkpoints, for `resume=`."""
    with _one_run(cfg, run_dir):
        _complete(cfg, Path(run_dir), job_num, overrides)
        return objective(cfg, run_dir)


def complete(cfg, run_dir: Path, overrides: list[str] = ()) -> dict:
    """The same job for the Python API (aexp.api.train): train `cfg` into `run_dir` unless it
    already finished there; return the final metrics row (the stored one when it had)."""
    with _one_run(cfg, run_dir):
        return _complete(cfg, Path(run_dir), None, overrides)


@contextlib.contextmanager
def _one_run(cfg, run_dir: Path):
    check_config(cfg)   # every value, before anything is loaded or trained
    # one run per folder at a time (rank 0 holds it for every rank of a torchrun)
    with folder_lock(Path(run_dir)) if distributed.is_main() else contextlib.nullcontext():
        yield


def _complete(cfg, run_dir: Path, job_num: int | None, overrides) -> dict:
    record = finished(cfg, run_dir)
    if record:
        if distributed.is_main():
            console.print(f"[bold]aexp[/] {run_dir} already holds this finished run: skipped")
        return record.get("final", {})
    if job_num is not None and cfg.device == "auto":
        pin_gpu(job_num)
    # the trackers of cfg.logger (rank 0's): a missing package is refused here, before training
    with Trackers(cfg.get("logger"), run_dir, enabled=distributed.is_main(), warn=_warn) as trackers:
        row = train(cfg, run_dir, overrides=overrides, trackers=trackers)
        if distributed.is_main():
            evaluate_run(cfg, run_dir)
            trackers.finish()     # eval.json, pictures, hparams with the final metrics
            mark_finished(cfg, run_dir, row)
    distributed.barrier()   # the other ranks read the objective only once rank 0 has written it
    return row


def _warn(text: str) -> None:
    console.print(f"[yellow]{escape(text)}[/]", soft_wrap=True)


def evaluate_run(cfg, run_dir: Path) -> None:
    """Test metrics and pictures of the trained run when `eval.enabled`. A failure of the
    evaluation is reported but does not undo the training."""
    ev = evaluate.settings(cfg)
    if not ev.enabled:
        return
    try:
        run = load_run(run_dir, which=str(ev.checkpoint), device=str(cfg.device))
        report = evaluate.evaluate(run, ev, log=console.log, pictures=bool(ev.pictures))
    except AexpError as e:
        console.print(f"[yellow]aexp: warning: evaluation failed: {e}[/]", soft_wrap=True)
        return
    console.print(f"[bold]eval[/] {len(report.get('pictures', []))} pictures and eval.json in {run_dir} "
                  f"({report['eval_seconds']:.1f}s)")
