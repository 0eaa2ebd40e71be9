"""`aexp <command>`: one command table. `train` and `lr-find` compose a run config from Hydra
overrides and go to the Hydra app (the only place that touches Hydra's globals); the other
commands take argparse arguments. Commands are imported only when called, so `aexp render`
starts without torch. User errors print one line and exit 2."""
import contextlib
import importlib
import os
import sys
import time
from typing import NamedTuple

from aexp import project
from aexp.errors import AexpError, FolderBusy, Interrupted, one_line
from aexp.io import FINISHED_MARKER, folder_lock

TRUST_ENV = "AEXP_TRUST"   # aexp.trust reads it; not imported here, which would bring omegaconf
JOBS_ENV = "AEXP_JOBS"     # aexp.run.threads reads it (importing it here would bring torch)


class Command(NamedTuple):
    name: str
    args: str
    help: str
    target: str          # "module:function", imported when the command runs
    hydra: bool = False  # composed from Hydra overrides; called as function(cfg, run_dir, ...)
    then: str = ""       # "module:function" called with the same arguments after a success


COMMANDS = [
    Command("train", "[overrides]", "train one run (Hydra overrides; -m/--multirun sweeps; --help "
            "for config help)", "aexp.jobs:run_job", hydra=True),
    Command("lr-find", "[overrides]", "sweep the learning rate over a few hundred steps; plot + "
            "suggested lr", "aexp.run.lr_find:lr_find", hydra=True),
    Command("render", "RUN_DIR", "turn a run's latent frames into latent.mp4 (--fps, --out, --gif)",
            "aexp.report.render:main", then="aexp.run.trackers.mlflow:attach_renders"),
    Command("eval", "RUN_DIR", "test metrics (eval.json), a table and pictures in RUN_DIR/pictures/",
            "aexp.report.evaluate:main"),
    Command("summary", "MULTIRUN_DIR", "one table (CSV, Markdown) and plots over every job of a sweep",
            "aexp.report.summary:main"),
    Command("explore", "RUN_DIR", "write RUN_DIR/explorer.html, a page to click around the latent "
            "space (--serve)", "aexp.report.explore:main"),
    Command("export", "RUN_DIR", "the model as safetensors, or its encoder and decoder as onnx or "
            "pt2 graphs (--format)", "aexp.report.export:main"),
    Command("sample", "RUN_DIR", "fit a sampler on the training codes (--sampler normal|gmm|"
            "two_stage|flow|prior), draw and score samples", "aexp.report.sample:main"),
    Command("prior", "RUN_DIR", "train a PixelCNN prior over a VQ-VAE's code maps (RUN_DIR/prior/, "
            "resumes)", "aexp.run.prior:main"),
    Command("init", "DIR", "write a small project of your own (aexp.yaml, conf/, a model, dataset "
            "and loss) into an empty DIR", "aexp.scaffold:main"),
    Command("check-model", "TARGET [ovr]", "the model contract checks on a model option or class "
            "(shapes, backward, determinism, state dict, export)", "aexp.contract:main"),
]
BY_NAME = {c.name: c for c in COMMANDS}

USAGE = "usage: aexp <command> [args]\n\ncommands:\n" + "".join(
    f"  {c.name:<12}{c.args:<14}{c.help}\n" for c in COMMANDS) + """
examples:
  aexp train
  aexp train model=vae dataset=mnist dataset.root=data train.epochs=2
  aexp train -m optimizer.lr=1e-3,3e-3
  aexp train resume=outputs/2026-01-01/12-00-00_3f9a
  aexp lr-find model=conv dataset=mnist
  aexp render outputs/2026-01-01/12-00-00_3f9a
  aexp eval outputs/2026-01-01/12-00-00_3f9a
  aexp summary multirun/2026-01-01/12-00-00_b71c --metric best_val_loss
  aexp explore outputs/2026-01-01/12-00-00_3f9a --projection tsne
  aexp export outputs/2026-01-01/12-00-00_3f9a --format onnx
  aexp sample outputs/2026-01-01/12-00-00_3f9a --sampler gmm k=20
  aexp prior outputs/2026-01-01/12-00-00_3f9a epochs=30
  aexp init myproject
  aexp train model=my_ae dataset=my_data loss=my_loss --project myproject
  aexp check-model my_ae dataset=my_data --project myproject

--project DIR (any command): the aexp project (aexp.yaml) to open; default: the nearest folder
at or above the current one holding an aexp.yaml (or $AEXP_PROJECT)
"""


def _fail(message: str, code: int = 2) -> int:
    """Print one line for the exception being handled; AEXP_DEBUG=1 re-raises it instead."""
    print(f"aexp: error: {message}", file=sys.stderr)
    if os.environ.get("AEXP_DEBUG"):
        raise
    return code


def _load(target: str):
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _hydra(command: Command, argv: list[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    # torch and Hydra come with these: imported here, so the other commands start without them
    from aexp.assemble import conf_dir
    from aexp.run import distributed, resume

    status = {"code": 0}

    @hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
    def app(cfg):
        from pathlib import Path

        task = _load(command.target)
        hc = HydraConfig.get()
        run_dir = distributed.agree(Path(hc.runtime.output_dir))
        multirun = hc.mode == RunMode.MULTIRUN
        side_by_side = _joblib_jobs(hc.launcher) if multirun else None
        jobs_before = os.environ.get(JOBS_ENV)
        if side_by_side:   # aexp.run.threads shares the cores among the jobs running at once
            os.environ[JOBS_ENV] = str(side_by_side)
        try:   # returns the objective: what a sweeper such as Optuna optimises
            return task(cfg, run_dir, job_num=hc.job.num if multirun else None,
                        overrides=list(hc.overrides.task))
        except Exception as e:
            ours = isinstance(e, AexpError)
            if os.environ.get("AEXP_DEBUG") or not (ours or multirun):
                raise   # a bug in a single run: its traceback
            text = str(e) if ours else f"{type(e).__name__}: {e}"
            print(f"aexp: error: {text}" if ours or not multirun else
                  f"aexp: error: job {hc.job.num} failed: {text}", file=sys.stderr)
            code = e.exit_code if ours else 1
            status["code"] = max(status["code"], code)
            if not multirun or isinstance(e, Interrupted):
                sys.exit(code)
            # a busy folder, or one holding a finished run, is another run's: left alone
            if not isinstance(e, FolderBusy) and not (run_dir / FINISHED_MARKER).is_file():
                (run_dir / "FAILED").write_text(f"{text}\n")  # the sweep goes on; the job is marked
        finally:   # (joblib runs n_jobs=1 in this very process)
            if side_by_side:
                _restore(JOBS_ENV, jobs_before)

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        args = resume.argv_for(argv)
        sys.argv = [f"aexp {command.name}", *args, *distributed.hydra_overrides(),
                    *project.searchpath_override(),   # the open project's conf/ beside aexp's
                    f"hydra.job.name={command.name.replace('-', '_')}"]
        # Hydra prints its own errors over several lines and exits 1; with this set it raises
        # them instead, and they become one line and exit code 2 like every other user error.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        with _named_folder_lock(command, args):
            app()
    except AexpError as e:
        return _fail(str(e), e.exit_code)
    except (HydraException, OmegaConfBaseException) as e:
        return _fail(one_line(e) + _project_hint(e, conf_dir()))
    except Exception as e:
        if not type(e).__module__.startswith("submitit."):
            raise
        # A submitit job that ended without a result (e.g. stopped by SIGTERM, not requeued):
        # its own log says why; submitit's message repeats that log over many lines.
        first = " ".join(str(e).split("\n")[:2])
        return _fail(f"{first}; run the same command again to resume the unfinished jobs", 1)
    finally:
        distributed.shutdown()
    return status["code"]


def _project_hint(e, conf) -> str:
    """For a group option Hydra could not find that is not one of aexp's own (`model=my_ae` of a
    run made inside a user project, resumed from outside it): where such an option lives."""
    group, _, name = str(getattr(e, "missing_cfg_file", None) or "").rpartition("/")
    if not group or not (conf / group).is_dir() or (conf / group / f"{name}.yaml").is_file():
        return ""
    opened = project.current()
    none_there = f"; the open project {opened.root} has no {group}/{name} either" if opened else ""
    return f"{none_there}; if it is an option of your own project, open that project: --project DIR"


def _joblib_jobs(launcher) -> int | None:
    """How many jobs Hydra's joblib launcher runs at once: its n_jobs, a negative one counted
    back from the cores as joblib does (-1 = all); None for other launchers. (A sweep of fewer
    jobs runs fewer: each then gets fewer threads than it could.)"""
    if "joblib" not in str(launcher.get("_target_", "")):
        return None
    n = launcher.get("n_jobs") or 1   # joblib: None = 1
    if n < 0:
        import joblib
        n = joblib.cpu_count() + 1 + n
    return max(1, n)


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _named_folder_lock(command: Command, args: list[str]):
    """A single `aexp train` into a folder named on the command line (hydra.run.dir=, which
    resume= sets) locks it before Hydra writes its .hydra/ files there, so a second run into a
    busy folder changes nothing in it. (Other runs are locked by their job, aexp.jobs.)"""
    named = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
    if (command.name != "train" or not named or "${" in named[-1] or int(os.environ.get("RANK", "0"))
            or any(a in ("-m", "--multirun") for a in args)):
        return contextlib.nullcontext()
    return folder_lock(named[-1])


def openmp_waits(window: float = 0.1) -> None:
    """Set how torch's OpenMP threads wait, before a command imports torch (libgomp reads
    OMP_WAIT_POLICY once, as it loads; a value the user set wins). Threads that finish a parallel
    region early spin (libgomp: ~300,000 iterations) before they sleep: beside busy processes they
    burn the cores the late thread needs (a conv AE step at 2 threads beside two busy processes:
    20-30 ms sleeping, 50-900 ms spinning), so where the cores are busy now PASSIVE makes them
    sleep at once. On quiet cores spinning is faster, most for bf16's many short parallel regions
    (the published 32x32 baseline, 2 threads, bf16: 36 ms a step spinning, 47 ms sleeping;
    docs/explanation/performance-cpu.md)."""
    if "OMP_WAIT_POLICY" not in os.environ and not cores_quiet(window):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def cores_quiet(window: float = 0.1, busy_below: float = 0.25) -> bool:
    """True when other processes use under `busy_below` of the machine's CPU time over `window`
    seconds (/proc/stat, sampled while this process sleeps); False where that cannot be read."""
    def ticks():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]   # all, idle + iowait
    try:
        (t0, i0), _, (t1, i1) = ticks(), time.sleep(window), ticks()
    except (OSError, ValueError, IndexError):
        return False
    return t1 > t0 and 1 - (i1 - i0) / (t1 - t0) < busy_below


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BY_NAME:
        print(f"aexp: error: unknown command '{name}' (choose from: {', '.join(BY_NAME)}; "
              f"see aexp --help)", file=sys.stderr)
        return 2
    openmp_waits()
    command = BY_NAME[name]
    # --trust (any command): open run folders whose stored config names targets outside aexp's
    # own (see aexp.trust); the same as AEXP_TRUST=1, for this call only
    trusting = "--trust" in rest
    before = os.environ.get(TRUST_ENV)
    if trusting:
        rest = [a for a in rest if a != "--trust"]
        os.environ[TRUST_ENV] = "1"
    # --project DIR (any command): the aexp project to open (aexp.project), for this call only
    rest, named_project = _take_option(rest, "--project")
    project_before = os.environ.get(project.ENV)
    if named_project is not None:
        os.environ[project.ENV] = named_project
    try:
        if command.name != "init":   # (a new project may be written inside another one)
            project.activate()       # its python on sys.path; a bad aexp.yaml is one line
        if command.hydra:
            return _hydra(command, rest)
        code = _load(command.target)(rest)
        if command.then and not code:
            _load(command.then)(rest)   # e.g. the rendered video to the run's MLflow run
        return code
    except AexpError as e:
        return _fail(str(e), e.exit_code)
    except KeyboardInterrupt:   # Ctrl-C outside the training loop's own handling
        print("aexp: error: interrupted", file=sys.stderr)
        return 130
    except OSError as e:        # the file system or the network: a folder under a file, a full
        where = f" ({e.filename})" if e.filename else ""   # disk, a port in use
        return _fail(f"{e.strerror or e}{where}")
    finally:
        if trusting:
            _restore(TRUST_ENV, before)
        if named_project is not None:
            _restore(project.ENV, project_before)


def _take_option(args: list[str], flag: str) -> tuple[list[str], str | None]:
    """`args` without `FLAG VALUE` / `FLAG=VALUE`, and the value (None when absent)."""
    rest, value, i = [], None, 0
    while i < len(args):
        if args[i] == flag and i + 1 < len(args):
            value, i = args[i + 1], i + 2
            continue
        if args[i].startswith(flag + "="):
            value = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    return rest, value


if __name__ == "__main__":
    sys.exit(main())
