"""MLflow (`logger=[csv,mlflow]`): one MLflow run per aexp run, in the experiment
`logger.mlflow.experiment` (by default named after the config: the preset, else the dataset).
Params = the resolved config, flattened (`model.hidden`, `optimizer.lr`, ...); metrics = every
metrics.csv column per epoch (step = epoch), then eval.json's numbers (`eval/...`); artifacts =
metrics.csv, eval.json, pictures/, latent.mp4 when it was rendered, the best checkpoint when
`log_checkpoint`.

The store is `logger.mlflow.tracking_uri`: by default a SQLite file, mlflow.db, in the folder
aexp runs in (artifacts beside it in mlruns/), or any server (`http://host:5000`).

A multirun is one parent run with a child run per job. Jobs may run in other processes (joblib,
submitit, SLURM), so the parent is found again by its tag, the sweep folder, under a lock file in
that folder: the first job creates it, the others (and a re-run of the sweep) join it.

Resume: the run id is kept in trackers.json. The reopened run's metric history says which epochs
it already holds: the epochs it lacks are logged, the ones it holds are not logged again."""
import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path
from urllib.parse import urlparse

from aexp.io import flatten
from aexp.run.trackers.base import RunInfo, Tracker, need

SWEEP_TAG = "aexp.sweep_dir"
# the stores MLflow's client opens (a database URI may name its driver: postgresql+psycopg2)
SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks",
           "databricks-uc", "uc")


class MLflow(Tracker):

    def __init__(self, tracking_uri: str = "sqlite:///mlflow.db", experiment: str | None = None,
                 log_checkpoint: bool = False):
        scheme = urlparse(str(tracking_uri)).scheme.split("+")[0]
        if scheme not in SCHEMES:   # a typo is refused now, not dropped with a warning mid-run
            raise ValueError(f"logger.mlflow.tracking_uri: {tracking_uri!r} is not an MLflow store "
                             f"(sqlite:///FILE, http://HOST:PORT, file:DIR, postgresql://..., databricks)")
        need("mlflow", "mlflow")
        # A server that does not answer must not hold training for minutes: MLflow's client
        # retries 7 times with backoff, waiting up to 120 s each time (settings given win).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating tables"
        self.uri, self.experiment = str(tracking_uri), experiment
        self.log_checkpoint = bool(log_checkpoint)
        self.client = self.run_id = self.parent = None

    def start(self, run: RunInfo, state: dict) -> int:
        from mlflow import MlflowClient
        # the store this run used, when the setting is unchanged (a resume from another folder
        # still finds ./mlflow.db where the run began)
        same = state.get("configured") == self.uri and state.get("tracking_uri")
        uri = state["tracking_uri"] if same else _absolute(self.uri)
        # the sweep's jobs share one parent and, on their first use, one new database (the
        # client makes its tables when built); runs side by side share a new database too
        with _locked(run.sweep_dir or _sqlite_folder(uri)):
            self.client = MlflowClient(uri)
            known = self._find(state.get("run_id")) if same else None
            exp = known.info.experiment_id if known else self._experiment(self.experiment or run.experiment())
            self.parent = self._parent(exp, run.sweep_dir) if run.sweep_dir else None
        if known:
            self.run_id = known.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            history = self.client.get_metric_history(self.run_id, "val_loss")
            held = max((m.step for m in history), default=0)
        else:
            tags = {"aexp.run_dir": str(run.run_dir.resolve())}
            if self.parent:
                tags["mlflow.parentRunId"] = self.parent
            name = f"job {run.job_num}" if run.sweep_dir else run.run_dir.name
            self.run_id = self.client.create_run(exp, run_name=name, tags=tags).info.run_id
            held = 0
        state.update(run_id=self.run_id, tracking_uri=uri, configured=self.uri, experiment_id=exp)
        self._params(run.settings(), known.data.params if known else {})
        if self.parent:
            self.client.update_run(self.parent, status="RUNNING")
        return held

    def log_epoch(self, row: dict, frame: Path | None) -> None:
        self._metrics({k: v for k, v in row.items() if k != "epoch"}, row["epoch"])

    def finish(self, run: RunInfo, report: dict, pictures: list[Path], final: dict) -> None:
        scores = {f"eval/{k}": v for k, v in flatten(report).items()}
        self._metrics({**scores, "best_val_loss": final["best_val_loss"]}, final["epoch"])
        folder = run.run_dir
        for name in ("metrics.csv", "eval.json", "latent.mp4"):
            if (folder / name).is_file():
                self.client.log_artifact(self.run_id, str(folder / name))
        if (folder / "pictures").is_dir():
            self.client.log_artifacts(self.run_id, str(folder / "pictures"), "pictures")
        best = folder / "checkpoints" / "best.pt"
        if self.log_checkpoint and best.is_file():
            self.client.log_artifact(self.run_id, str(best), "checkpoints")

    def close(self, status: str) -> None:
        if self.client is None or self.run_id is None:
            return
        self.client.set_terminated(self.run_id, status)
        if self.parent and status == "FINISHED":   # a sweep's parent: finished with its last job
            self.client.set_terminated(self.parent, "FINISHED")
        self.client = None

    def _find(self, run_id):
        """The run trackers.json names, if the store still has it (not deleted)."""
        if not run_id:
            return None
        try:
            found = self.client.get_run(run_id)
        except Exception as e:
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", "")) or "not found" in str(e).lower():
                return None
            raise
        return found if found.info.lifecycle_stage == "active" else None

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:   # created meanwhile by another run
            return self.client.get_experiment_by_name(name).experiment_id

    def _parent(self, exp: str, sweep_dir: Path) -> str:
        """The sweep's parent run: found by its tag, or created."""
        key = str(sweep_dir)
        # a quote cannot be escaped in a filter string: match it with LIKE's one-character wildcard
        test = f"= '{key}'" if "'" not in key else f"LIKE '{key.replace(chr(39), '_')}'"
        found = self.client.search_runs([exp], filter_string=f"tags.`{SWEEP_TAG}` {test}",
                                        max_results=1)
        if found:
            return found[0].info.run_id
        return self.client.create_run(exp, run_name=sweep_dir.name, tags={SWEEP_TAG: key}).info.run_id

    def _params(self, settings: dict, logged: dict) -> None:
        """The flattened config as params. A resumed run's params stay as first logged (MLflow
        refuses to change them); a value changed on resume (train.epochs) is noted as a tag."""
        from mlflow.entities import Param, RunTag
        values = {k: str(v)[:6000] for k, v in settings.items()}   # MLflow's length limit
        new = [Param(k, v) for k, v in values.items() if k not in logged]
        changed = [RunTag(f"resumed_with.{k}", v) for k, v in values.items() if k in logged and logged[k] != v]
        for i in range(0, max(len(new), len(changed)), 100):   # MLflow's batch limit
            self.client.log_batch(self.run_id, params=new[i:i + 100], tags=changed[i:i + 100])

    def _metrics(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])


def attach_renders(argv: list[str]) -> None:
    """After `aexp render RUN_DIR` (the command table calls it): each rendered video goes to its
    run's MLflow run, when the run was tracked there. A failure is one warning line."""
    import argparse
    import json
    import sys
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--gif", action="store_true")
    args, _ = ap.parse_known_args(argv)
    folder = args.run_dir
    jobs = [folder] if (folder / "frames").is_dir() else sorted(p.parent for p in folder.glob("*/frames"))
    for job in jobs:
        state = job / "trackers.json"
        video = args.out or job / ("latent.gif" if args.gif else "latent.mp4")
        try:
            tracked = json.loads(state.read_text()).get("mlflow") if state.is_file() else None
            if tracked and video.is_file():
                need("mlflow", "mlflow")
                from mlflow import MlflowClient
                MlflowClient(tracked["tracking_uri"]).log_artifact(tracked["run_id"], str(video))
        except Exception as e:
            print(f"aexp: warning: {video} was not sent to MLflow ({type(e).__name__}: "
                  f"{' '.join(str(e).split())[:200]})", file=sys.stderr)


def _absolute(uri: str) -> str:
    """A relative SQLite path made absolute: the store stays the same file whichever folder a
    resume starts in (and MLflow, which caches stores by URI, never mixes two folders' files)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/") and uri[len(prefix):] != ":memory:":
        return prefix + str(Path(uri[len(prefix):]).expanduser().resolve())
    return uri


def _sqlite_folder(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]).parent if uri.startswith("sqlite:////") else None


@contextlib.contextmanager
def _locked(folder: Path | None):
    """Hold `folder`/.mlflow.lock (waiting for it), or nothing without a folder."""
    if folder is None:
        yield
        return
    fd = os.open(folder / ".mlflow.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
