"""`aexp <command>`: `train` goes to the Hydra app (the only place that touches Hydra's globals);
the other commands use argparse. User errors print one line and exit 2."""
import os
import sys

USAGE = """usage: aexp <command> [args]

commands:
  train   [overrides]   train one run (Hydra overrides; -m/--multirun sweeps; --help for config help)
  render  RUN_DIR       turn a run's latent frames into latent.mp4 (--fps, --out, --gif)
  eval    RUN_DIR       test metrics (eval.json), a table and pictures in RUN_DIR/pictures/
  summary MULTIRUN_DIR  one table (CSV, Markdown) and plots over every job of a sweep
  explore RUN_DIR       write RUN_DIR/explorer.html, a page to click around the latent space (--serve)

examples:
  aexp train
  aexp train model=vae dataset=mnist dataset.root=data train.epochs=2
  aexp train -m optimizer.lr=1e-3,3e-3
  aexp render outputs/2026-01-01/12-00-00
  aexp eval outputs/2026-01-01/12-00-00
  aexp summary multirun/2026-01-01/12-00-00 --metric best_val_loss
  aexp explore outputs/2026-01-01/12-00-00 --projection tsne
"""


def _fail(message: str) -> int:
    print(f"aexp: error: {message}", file=sys.stderr)
    if os.environ.get("AEXP_DEBUG"):
        raise
    return 2


def _train(argv: list[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from aexp.errors import AexpError
    from aexp.paths import conf_dir

    status = {"code": 0}

    @hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
    def app(cfg):
        from pathlib import Path

        from aexp import distributed
        from aexp.jobs import run_job
        hc = HydraConfig.get()
        run_dir = distributed.agree(Path(hc.runtime.output_dir))
        multirun = hc.mode == RunMode.MULTIRUN
        try:   # returns the objective: what a sweeper such as Optuna optimises
            return run_job(cfg, run_dir, job_num=hc.job.num if multirun else None)
        except AexpError as e:
            print(f"aexp: error: {e}", file=sys.stderr)
            status["code"] = 2
            if not multirun:
                sys.exit(2)
            (run_dir / "FAILED").write_text(f"{e}\n")  # the sweep goes on; the job is marked

    from aexp import distributed
    sys.argv = ["aexp train", *argv, *distributed.hydra_overrides()]
    try:
        app()
    finally:
        distributed.shutdown()
    return status["code"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        return _train(rest)
    commands = {"render": "aexp.render", "eval": "aexp.evaluate", "summary": "aexp.summary",
                "explore": "aexp.explore"}
    if command not in commands:
        print(f"aexp: unknown command '{command}' (choose from: train, {', '.join(commands)}; "
              f"see aexp --help)", file=sys.stderr)
        return 2
    import importlib

    from aexp.errors import AexpError
    try:
        return importlib.import_module(commands[command]).main(rest)
    except AexpError as e:
        return _fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
