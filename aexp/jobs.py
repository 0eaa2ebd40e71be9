"""One job of a run or sweep, around `train`: skip it when its folder already holds the finished
run (so re-running a multirun only does the unfinished jobs), pin it to a GPU when several jobs
share a multi-GPU machine, mark it finished, and return the value a sweeper (Optuna) optimises."""
import json
from pathlib import Path

from omegaconf import OmegaConf

from aexp import distributed
from aexp.checkpoint import atomic_write
from aexp.errors import ConfigError
from aexp.evaluate import flatten
from aexp.metrics import read_csv

MARKER = "COMPLETED.json"
# Keys that say how to run, not what is computed: a finished run stays finished when they change.
IGNORED = ("resume", "device", "objective")


def _comparable(cfg) -> dict:
    config = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in config.items() if k not in IGNORED}


def _without_epochs(config: dict) -> dict:
    return {**config, "train": {k: v for k, v in config.get("train", {}).items() if k != "epochs"}}


def finished(cfg, run_dir: Path) -> dict | None:
    """The completion record of `run_dir` when it holds this config's finished run, else None.
    A finished run of another config is refused: training over it would destroy it."""
    path = Path(run_dir) / MARKER
    if not path.is_file():
        return None
    record, now = json.loads(path.read_text()), _comparable(cfg)
    then = record.get("config", {})
    if _without_epochs(then) == _without_epochs(now) and now["train"]["epochs"] > then["train"]["epochs"]:
        path.unlink()   # the same run asked to go on for more epochs: not finished any more
        return None
    if then != now:
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
        pick = {"last": lambda v: v[-1], "min": min, "max": max}
        if reduce not in pick:
            raise ConfigError(f"objective.reduce must be one of {', '.join(pick)}, got {reduce!r}")
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
    from aexp.train import console, train

    run_dir = Path(run_dir)
    if finished(cfg, run_dir):
        if distributed.is_main():
            console.print(f"[bold]aexp[/] {run_dir} already holds this finished run: skipped")
        return objective(cfg, run_dir)
    if job_num is not None and cfg.device == "auto":
        pin_gpu(job_num)
    row = train(cfg, run_dir, overrides=overrides)
    if distributed.is_main():
        mark_finished(cfg, run_dir, row)
    distributed.barrier()   # the other ranks read the objective only once rank 0 has written it
    return objective(cfg, run_dir)


def best_trial(sweep_dir: Path) -> tuple[Path | None, dict] | None:
    """For an Optuna sweep folder: (the job folder of the best trial, optimization_results.yaml),
    the folder found by matching the best parameters against each job's overrides (None when the
    best trial ran in an earlier invocation of a continued search). None for other sweeps."""
    sweep_dir = Path(sweep_dir)
    results = sweep_dir / "optimization_results.yaml"
    if not results.is_file():
        return None
    best = OmegaConf.to_container(OmegaConf.load(results))
    for overrides in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        given = dict(o.split("=", 1) for o in OmegaConf.load(overrides) if "=" in o)
        params = best.get("best_params") or {}
        if params and all(k in given and _same(given[k], v) for k, v in params.items()):
            return overrides.parent.parent, best
    return None, best


def describe_best(sweep_dir: Path) -> tuple[Path | None, str] | None:
    """(the best trial's job folder, one line saying which trial won, with what parameters and
    value of which objective) for an Optuna sweep folder; None for other sweeps."""
    found = best_trial(sweep_dir)
    if found is None or "best_value" not in found[1]:
        return None   # not Optuna, or a multi-objective search (no single best trial)
    folder, result = found
    params = ", ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in result.get("best_params", {}).items())
    # What was optimised, from a job's own config: the best one's, else any in the folder.
    job = folder or next((p.parent.parent for p in Path(sweep_dir).glob("*/.hydra/hydra.yaml")), None)
    metric, direction, study = "objective", "", ""
    if job is not None:
        goal = OmegaConf.load(job / ".hydra" / "config.yaml").get("objective") or {}
        reduce = goal.get("reduce", "last")
        metric = goal.get("metric", metric) + (f" ({reduce} over epochs)" if reduce != "last" else "")
        sweeper = OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.sweeper
        direction, study = f", {sweeper.get('direction')}d", f" of study {sweeper.get('study_name')}"
    where = f"job {folder.name}" if folder else "a trial run in an earlier invocation (not in this folder)"
    value = result["best_value"]
    value = f"{value:.5g}" if isinstance(value, float) else str(value)
    return folder, f"Optuna best trial{study}: {where} · {params} · {metric} = {value}{direction}"


def _same(text: str, value) -> bool:
    try:
        return float(text) == float(value)
    except (TypeError, ValueError):
        return text == str(value)
