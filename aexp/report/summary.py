"""`aexp summary MULTIRUN_DIR`: one table over every job of a sweep (its overrides, final and
best metrics, eval metrics, time, status), written as `summary.csv` and `summary.md` and printed;
plus plots across the sweep: a chosen metric against each swept parameter, and the overlaid
curves of all jobs (validation loss; colourisation accuracy-vs-bound when present).

A job is `done` (finished all epochs), `incomplete` (no checkpoint, or fewer epochs than asked)
or `failed` (a `FAILED` file, written when a multirun job raised a user error). No job is dropped.
An Optuna search (hydra/sweeper=optuna) has its best trial found and named."""
import json
from pathlib import Path

from omegaconf import OmegaConf

from aexp.assemble import load_run
from aexp.errors import AexpError, ArgumentParser
from aexp.io import FINISHED_MARKER, flatten, read_csv, write_csv
from aexp.report import plots
from aexp.report.pictures import sweep_colorization


def job_dirs(sweep: Path) -> list[Path]:
    """Job folders of a multirun (folders holding .hydra), in job-number order."""
    jobs = [p.parent for p in sweep.glob("*/.hydra") if p.is_dir()]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def read_yaml(path: Path, kind: type = dict):
    """A run folder's YAML file as plain data of `kind`, interpolations left as text (a folder
    may come from anyone: nothing in it is evaluated); an empty `kind` when missing or unreadable."""
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:   # missing, not YAML, not a mapping or list
        return kind()
    return data if isinstance(data, kind) else kind()


def overrides(job: Path) -> dict:
    items = read_yaml(job / ".hydra" / "overrides.yaml", list)
    return dict(str(item).split("=", 1) for item in items if "=" in str(item))


def read_rows(job: Path) -> list[dict]:
    """metrics.csv's rows when it is one (an `epoch` number in every row), else none."""
    try:
        rows = read_csv(job / "metrics.csv")
    except (OSError, ValueError, UnicodeDecodeError):
        return []
    return rows if all(isinstance(r.get("epoch"), int) for r in rows) else []


def read_report(job: Path) -> dict:
    try:
        report = json.loads((job / "eval.json").read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def job_row(job: Path) -> tuple[dict, list[dict], dict]:
    """(table row, metrics rows, eval report) of one job folder."""
    rows, report = read_rows(job), read_report(job)
    epochs = (read_yaml(job / ".hydra" / "config.yaml").get("train") or {}).get("epochs")
    epochs = epochs if isinstance(epochs, int) else None
    if (job / "FAILED").is_file():
        status = "failed"
        note = (job / "FAILED").read_text().strip().splitlines()[:1]
    elif not (job / "checkpoints" / "last.pt").is_file():
        status, note = "incomplete", ["no checkpoint"]
    elif (job / FINISHED_MARKER).is_file():      # the job said so (it may stop at train.max_steps)
        status, note = "done", []
    elif epochs is not None and (not rows or rows[-1]["epoch"] < epochs):
        status, note = "incomplete", [f"{rows[-1]['epoch'] if rows else 0} of {epochs} epochs"]
    else:
        status, note = "done", []
    row = {"job": job.name, "status": status, **overrides(job)}
    if rows:
        best = min(rows, key=lambda r: r["val_loss"] if r.get("val_loss") is not None else float("inf"))
        row.update({"epochs": rows[-1]["epoch"], "final_train_loss": rows[-1].get("train_loss"),
                    "final_val_loss": rows[-1].get("val_loss"), "best_val_loss": best.get("val_loss"),
                    "best_epoch": best["epoch"],
                    "seconds": round(sum(r.get("seconds") or 0 for r in rows), 2)})
    skip = ("run_dir", "checkpoint", "dataset", "task", "model", "classifier.cache",
            "classifier.from_cache", "vae.data", "vae.likelihood")
    row.update({f"eval.{k}": v for k, v in flatten(report).items() if k not in skip})
    row["note"] = note[0] if note else ""
    return row, rows, report


def markdown(table: list[dict], columns: list[str]) -> str:
    fmt = lambda v: "" if v is None else (f"{v:.5g}" if isinstance(v, float) else str(v).replace("|", "\\|"))
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in table]
    return "\n".join(lines) + "\n"


def _number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def sweep_plots(table, swept, metric, out: Path) -> list[Path]:
    """The metric against each swept parameter, one line per setting of the other parameters
    (numeric parameters on a log axis when they span a decade)."""
    files = []
    for param in swept:
        others = [p for p in swept if p != param]
        groups = {}
        for r in table:
            y = _number(r.get(metric))
            if y is None:
                continue
            key = ", ".join(f"{p}={r.get(p)}" for p in others) or metric
            groups.setdefault(key, []).append((r.get(param), y))
        if not groups:
            continue
        numeric = all(_number(x) is not None for g in groups.values() for x, _ in g)
        order = sorted({x for g in groups.values() for x, _ in g}, key=lambda v: _number(v) if numeric else str(v))
        pos = {x: (_number(x) if numeric else i) for i, x in enumerate(order)}
        series = [(k, [pos[x] for x, _ in sorted(g, key=lambda t: pos[t[0]])],
                   [y for _, y in sorted(g, key=lambda t: pos[t[0]])]) for k, g in groups.items()]
        xs = [pos[x] for x in order]
        logx = numeric and min(xs) > 0 and max(xs) / min(xs) >= 10
        files.append(plots.curves(series, out / f"summary_{metric}_vs_{param.replace('/', '_')}.png",
                                  param, metric, f"{metric} against {param}",
                                  None if numeric else order, logx))
    return files


def summarize(sweep: Path, metric: str = "best_val_loss", out: Path | None = None) -> tuple[list[dict], list[Path]]:
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise AexpError(f"no such folder: {sweep}")
    jobs = job_dirs(sweep)
    if not jobs:
        raise AexpError(f"{sweep} holds no job folders (expected <job>/.hydra/ from `aexp train -m`)")
    out = Path(out) if out else sweep
    table, runs, reports = [], [], []
    for job in jobs:
        row, rows, report = job_row(job)
        table.append(row)
        reports.append(report)
        runs.append((row, rows, report.get("colorization", {}).get("curve")))
    all_keys = list(dict.fromkeys(k for r in table for k in r))
    swept = [k for k in all_keys if k not in ("job", "status", "note") and not _is_result(k)
             and _varies(table, k)]
    curves, bound_curves = [], []
    for row, rows, c in runs:      # a curve is named by the options that differ between jobs
        label = ", ".join(f"{k}={row[k]}" for k in swept if row.get(k) is not None) or f"job {row['job']}"
        if rows:
            curves.append((label, [r["epoch"] for r in rows], [r.get("val_loss") for r in rows]))
        if c:
            bound_curves.append((label, c["bounds"], c["accuracy"]))
    front = ["job", "status"] + [k for k in all_keys if not _is_result(k) and k not in ("job", "status", "note")]
    columns = front + [k for k in all_keys if _is_result(k)] + ["note"]
    table = [{c: r.get(c) for c in columns} for r in table]
    if metric not in all_keys:
        raise AexpError(f"--metric {metric} is not a column of the summary; choose from: "
                        f"{', '.join(k for k in all_keys if _is_result(k))}")
    optuna = describe_best(sweep)   # an Optuna search: its best trial is marked and named
    if optuna and optuna[0] is not None:
        next(r for r in table if r["job"] == optuna[0].name)["note"] = "Optuna best trial"
    write_csv(out / "summary.csv", table)
    (out / "summary.md").write_text(markdown(table, columns) + (f"\n{optuna[1]}\n" if optuna else ""))
    files = [out / "summary.csv", out / "summary.md"]
    if curves:
        files.append(plots.curves(curves, out / "summary_val_loss_curves.png", "epoch", "validation loss",
                                  "validation loss of every job"))
    if bound_curves:   # every job tests on the same split: one job's baselines stand for all
        bound_curves += plots.baseline_curves(next((r for r in reports if r.get("baseline")), {}))
        files.append(plots.curves(bound_curves, out / "summary_accuracy_vs_bound.png",
                                  "bound on |error| of a,b", "accuracy", "colourisation accuracy vs bound"))
    files += sweep_plots(table, swept, metric, out)
    if bound_curves:
        files += colorization_grid(jobs, table, swept, out)
    return table, files


def colorization_grid(jobs, table, swept, out: Path) -> list[Path]:
    """`summary_colorization.png`: the same test photos through every finished job's best
    checkpoint. A job that cannot be loaded (refused as untrusted, broken) is left out with one
    line saying why."""
    runs = []
    for job, row in zip(jobs, table):
        if row["status"] != "done":
            continue
        try:
            run = load_run(job, "best", device="cpu")
        except AexpError as e:
            print(f"summary: {job.name} left out of summary_colorization.png: {e}")
            continue
        label = ", ".join(f"{k}={row[k]}" for k in swept if row.get(k) is not None) or f"job {row['job']}"
        runs.append((label, run))
    return [sweep_colorization(runs, out / "summary_colorization.png")] if runs else []


def _varies(table, key) -> bool:
    """A swept parameter: jobs that set it disagree (a job without overrides does not count)."""
    return len({str(r.get(key)) for r in table if r.get(key) is not None}) > 1


RESULTS = ("epochs", "final_", "best_", "seconds", "eval.")


def _is_result(key: str) -> bool:
    return key.startswith(RESULTS)


def print_table(table: list[dict], metric: str) -> None:
    from rich.console import Console
    from rich.table import Table
    """Swept parameters and the headline results (the files hold every column)."""
    keep = [c for c in table[0] if c in ("job", "status", "note", metric)
            or (_is_result(c) and not c.startswith("eval.")) or (not _is_result(c) and _varies(table, c))]
    t = Table(title=f"aexp summary ({len(table)} jobs)")
    for c in keep:
        t.add_column(c, justify="right" if c not in ("status", "note") else "left",
                     max_width=30 if c == "note" else None, min_width=10 if c == "status" else None,
                     no_wrap=c == "note", overflow="ellipsis")
    style = {"done": "", "failed": "red", "incomplete": "yellow"}
    for r in table:
        t.add_row(*[("" if r[c] is None else f"{r[c]:.5g}" if isinstance(r[c], float) else str(r[c]))
                    for c in keep], style=style.get(r["status"], ""))
    Console().print(t)


def best_trial(sweep_dir: Path) -> tuple[Path | None, dict] | None:
    """For an Optuna sweep folder: (the job folder of the best trial, optimization_results.yaml),
    the folder found by matching the best parameters against each job's overrides (None when the
    best trial ran in an earlier invocation of a continued search). None for other sweeps."""
    sweep_dir = Path(sweep_dir)
    results = sweep_dir / "optimization_results.yaml"
    if not results.is_file():
        return None
    best = read_yaml(results)
    for path in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        given = overrides(path.parent.parent)
        params = best.get("best_params") or {}
        if params and all(k in given and _same(given[k], v) for k, v in params.items()):
            return path.parent.parent, best
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
        goal = read_yaml(job / ".hydra" / "config.yaml").get("objective") or {}
        reduce = goal.get("reduce", "last")
        metric = str(goal.get("metric", metric)) + (f" ({reduce} over epochs)" if reduce != "last" else "")
        sweeper = (read_yaml(job / ".hydra" / "hydra.yaml").get("hydra") or {}).get("sweeper") or {}
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


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="aexp summary", description="Summarise every job of a multirun: "
                                 "summary.csv, summary.md, a table, and plots across the sweep.")
    ap.add_argument("sweep_dir", type=Path, help="a multirun folder (multirun/<date>/<time>_<tag>)")
    ap.add_argument("--metric", default="best_val_loss",
                    help="column plotted against each swept parameter (default best_val_loss; "
                         "e.g. final_val_loss, eval.reconstruction.psnr)")
    ap.add_argument("--out", type=Path, help="folder for the table and plots (default: the sweep folder)")
    args = ap.parse_args(argv)
    table, files = summarize(args.sweep_dir, args.metric, args.out)
    print_table(table, args.metric)
    optuna = describe_best(args.sweep_dir)
    if optuna:
        print(optuna[1])
    print(f"wrote {len(files)} files in {args.out or args.sweep_dir}: " + ", ".join(p.name for p in files))
    return 0
