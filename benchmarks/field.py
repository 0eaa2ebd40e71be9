"""Speed in the field, for `make bench`: the default `aexp train` on a quiet machine and beside one
busy process, with `train.threads=auto` and with torch's default thread count; and a 4-job joblib
sweep on 2 cores against the same 4 jobs run one after another.

Every run goes through the real entry point (`python -m aexp.cli train`) in its own process, as a
user starts it: the CLI sets OpenMP's wait policy before torch loads (aexp.cli.main), which an
in-process run would not see. `torch default, spinning` puts back what runs did before that
change: libgomp's own spinning waits (GOMP_SPINCOUNT at its default, 300,000, which overrides
the wait policy) at torch's default thread count."""
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from aexp.io import read_csv

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {   # name -> (overrides, extra environment)
    "auto": (["train.threads=auto"], {}),
    "torch default": (["train.threads=null"], {}),
    "torch default, spinning": (["train.threads=null"], {"GOMP_SPINCOUNT": "300000"}),
}


def aexp(args, env=None, cores=None) -> float:
    """Run `aexp ARGS` in a subprocess (on `cores` only, when given); return its wall seconds."""
    return launch(args, env, cores)[0]


def launch(args, env=None, cores=None, poll: bool = False) -> tuple[float, int]:
    """Run `aexp ARGS` in a subprocess (on `cores` only, when given); return (wall seconds, peak
    RssAnon in bytes seen by polling it every 20 ms when `poll`, else 0)."""
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "aexp.cli", *map(str, args)], cwd=ROOT,
                            env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=pin)
    peak = [0]

    def watch():
        while proc.poll() is None:
            peak[0] = max(peak[0], rss_anon(proc.pid))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True) if poll else None
    if watcher:
        watcher.start()
    _, err = proc.communicate()
    if watcher:
        watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"aexp {' '.join(map(str, args))} failed:\n{err[-2000:]}")
    return time.perf_counter() - t0, peak[0]


def rss_anon(pid: int) -> int:
    """A process's resident anonymous memory in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@contextmanager
def busy(on: bool):
    """One other process spinning on a core (or nothing), for as long as the block runs."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if on else None
    try:
        yield
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()


def busy_machine(epochs: int = 8) -> dict:
    """Median epoch seconds (epochs 2..N, frames included, no evaluation) of the default
    `aexp train`, per thread variant, quiet and beside one spinning process."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for condition in ("quiet", "busy"):
            for name, (overrides, env) in VARIANTS.items():
                run = Path(tmp) / f"{condition}-{name.replace(' ', '_').replace(',', '')}"
                with busy(condition == "busy"):
                    aexp(["train", f"train.epochs={epochs}", "eval.enabled=false", *overrides,
                          f"hydra.run.dir={run}"], env)
                rows = read_csv(run / "metrics.csv")
                seconds = [r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]]
                out.setdefault(name, {})[f"{condition}_epoch_s"] = statistics.median(seconds)
    return out


def sweep_on_two_cores(epochs: int = 20, jobs: int = 4) -> dict:
    """`jobs` default runs (one learning rate each, no evaluation) as one joblib sweep running
    them all at once, and as a sweep running them one after another (Hydra's basic launcher, one
    process), both pinned to 2 cores (fewer when the machine has fewer): wall seconds, and the
    median epoch seconds over all jobs (how much an epoch slows down when jobs share the cores;
    the rest of the wall time is starting processes, loading, frames and checkpoints)."""
    cores = sorted(os.sched_getaffinity(0))[:2]
    lrs = ",".join(f"{1e-3 * (i + 1):g}" for i in range(jobs))
    common = ["train", "-m", f"optimizer.lr={lrs}", f"train.epochs={epochs}", "eval.enabled=false"]
    out = {"cores": len(cores), "jobs": jobs, "epochs": epochs}
    with tempfile.TemporaryDirectory() as tmp:
        for name, launcher in (("together", ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]),
                               ("one_after_another", [])):
            sweep = Path(tmp) / name
            out[f"{name}_s"] = aexp([*common, *launcher, f"hydra.sweep.dir={sweep}"], cores=cores)
            out[f"{name}_epoch_s"] = statistics.median(r["seconds"] for job in sweep.glob("[0-9]*")
                                                       for r in read_csv(job / "metrics.csv"))
    return out


def markdown(busy_rows: dict, sweep: dict) -> list[str]:
    lines = ["", "Default `aexp train`, median epoch (frames included), quiet and beside one spinning process:",
             "", "| threads | quiet s | busy s | busy / quiet |", "| --- | ---: | ---: | ---: |"]
    for name, v in busy_rows.items():
        lines.append(f"| {name} | {v['quiet_epoch_s']:.3f} | {v['busy_epoch_s']:.3f} | "
                     f"{v['busy_epoch_s'] / v['quiet_epoch_s']:.2f}× |")
    auto = busy_rows.get("auto")
    for name, v in busy_rows.items():
        if auto and name != "auto":
            lines.append(f"\nBusy machine, {name} / auto: {v['busy_epoch_s'] / auto['busy_epoch_s']:.2f}× "
                         f"(quiet: {v['quiet_epoch_s'] / auto['quiet_epoch_s']:.2f}×)")
    s = sweep
    lines += ["", f"{s['jobs']}-job sweep of the default run ({s['epochs']} epochs each) on {s['cores']} cores:", "",
              "| launcher | wall s | median epoch s |", "| --- | ---: | ---: |",
              f"| joblib, all at once | {s['together_s']:.1f} | {s['together_epoch_s']:.3f} |",
              f"| one after another | {s['one_after_another_s']:.1f} | {s['one_after_another_epoch_s']:.3f} |",
              "", f"One after another / all at once: {s['one_after_another_s'] / s['together_s']:.2f}× wall"]
    return lines
