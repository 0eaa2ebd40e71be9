"""`aexp <command>`: one command table. `train` and `lr-find` compose a run config from Hydra
overrides and go to the Hydra app (the only place that touches Hydra's globals); the other
commands take argparse arguments. Commands are imported only when called, so `aexp render`
starts without torch. User errors print one line and exit 2."""
import importlib
import os
import sys
from typing import NamedTuple

from aexp.errors import AexpError, Interrupted


class Command(NamedTuple):
    name: str
    args: str
    help: str
    target: str          # "module:function", imported when the command runs
    hydra: bool = False  # composed from Hydra overrides; called as function(cfg, run_dir, ...)


COMMANDS = [
    Command("train", "[overrides]", "train one run (Hydra overrides; -m/--multirun sweeps; --help "
            "for config help)", "aexp.jobs:run_job", hydra=True),
    Command("lr-find", "[overrides]", "sweep the learning rate over a few hundred steps; plot + "
            "suggested lr", "aexp.run.lr_find:lr_find", hydra=True),
    Command("render", "RUN_DIR", "turn a run's latent frames into latent.mp4 (--fps, --out, --gif)",
            "aexp.report.render:main"),
    Command("eval", "RUN_DIR", "test metrics (eval.json), a table and pictures in RUN_DIR/pictures/",
            "aexp.report.evaluate:main"),
    Command("summary", "MULTIRUN_DIR", "one table (CSV, Markdown) and plots over every job of a sweep",
            "aexp.report.summary:main"),
    Command("explore", "RUN_DIR", "write RUN_DIR/explorer.html, a page to click around the latent "
            "space (--serve)", "aexp.report.explore:main"),
]
BY_NAME = {c.name: c for c in COMMANDS}

USAGE = "usage: aexp <command> [args]\n\ncommands:\n" + "".join(
    f"  {c.name:<8}{c.args:<14}{c.help}\n" for c in COMMANDS) + """
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
"""


def _fail(message: str, code: int = 2) -> int:
    """Print one line for the exception being handled; AEXP_DEBUG=1 re-raises it instead."""
    print(f"aexp: error: {message}", file=sys.stderr)
    if os.environ.get("AEXP_DEBUG"):
        raise
    return code


def _one_line(e: BaseException) -> str:
    """Hydra and OmegaConf errors span several lines (and a cause): fold them into one."""
    text = " ".join(str(e).split()).split(" Config search path:")[0]
    cause = e.__cause__
    if cause is not None and str(cause).strip():
        text += f" ({str(cause).strip().splitlines()[0]})"
    return text or type(e).__name__


def _load(target: str):
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _hydra(command: Command, argv: list[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    # torch and Hydra come with these: imported here, so the other commands start without them
    from aexp.build import conf_dir
    from aexp.run import distributed, resume

    status = {"code": 0}

    @hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
    def app(cfg):
        from pathlib import Path

        task = _load(command.target)
        hc = HydraConfig.get()
        run_dir = distributed.agree(Path(hc.runtime.output_dir))
        multirun = hc.mode == RunMode.MULTIRUN
        try:   # returns the objective: what a sweeper such as Optuna optimises
            return task(cfg, run_dir, job_num=hc.job.num if multirun else None,
                        overrides=list(hc.overrides.task))
        except AexpError as e:
            if os.environ.get("AEXP_DEBUG"):
                raise
            print(f"aexp: error: {e}", file=sys.stderr)
            status["code"] = e.exit_code
            if not multirun or isinstance(e, Interrupted):
                sys.exit(e.exit_code)
            (run_dir / "FAILED").write_text(f"{e}\n")  # the sweep goes on; the job is marked

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        sys.argv = [f"aexp {command.name}", *resume.argv_for(argv), *distributed.hydra_overrides(),
                    f"hydra.job.name={command.name.replace('-', '_')}"]
        # Hydra prints its own errors over several lines and exits 1; with this set it raises
        # them instead, and they become one line and exit code 2 like every other user error.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        app()
    except AexpError as e:
        return _fail(str(e), e.exit_code)
    except (HydraException, OmegaConfBaseException) as e:
        return _fail(_one_line(e))
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BY_NAME:
        print(f"aexp: unknown command '{name}' (choose from: {', '.join(BY_NAME)}; "
              f"see aexp --help)", file=sys.stderr)
        return 2
    command = BY_NAME[name]
    if command.hydra:
        return _hydra(command, rest)
    try:
        return _load(command.target)(rest)
    except AexpError as e:
        return _fail(str(e), e.exit_code)


if __name__ == "__main__":
    sys.exit(main())
