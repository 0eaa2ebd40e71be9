"""Weights & Biases (`logger=[csv,wandb]`): offline by default, into the run folder
(RUN_DIR/wandb/offline-run-*/; `wandb sync` uploads it later), `logger.wandb.mode=online` to
send it as it goes. The run's config is the resolved config; per epoch one history row at
step = epoch with every metrics.csv column and the latent frame as a wandb.Image (epoch 0 =
before training); at the end the pictures as images and eval.json's numbers in the summary.
A multirun's jobs share a group named after the sweep folder.

Resume: the run id is kept in trackers.json and the run reopened with it (resume="allow"; an
offline run continues in a new offline folder with the same id, which `wandb sync` joins);
epochs the run already holds are not logged again. W&B's service writes an offline run's file
every 15 s or so, and a killed run loses what it had not written: so an offline run's files are
read back on resume, and the epochs they lack are logged from the checkpoint's rows."""
import secrets
from pathlib import Path

from aexp.io import flatten
from aexp.run.trackers.base import RunInfo, Tracker, need

MODES = ("offline", "online", "disabled")


class WandB(Tracker):

    def __init__(self, mode: str = "offline", project: str = "aexp", entity: str | None = None,
                 dir: str | None = None, tags=()):
        if mode not in MODES:
            raise ValueError(f"logger.wandb.mode must be one of {', '.join(MODES)}, got {mode!r}")
        need("wandb", "wandb")
        self.mode, self.project, self.entity = mode, project, entity
        self.dir, self.tags = dir, [str(t) for t in tags or ()]
        self.run = None

    def start(self, run: RunInfo, state: dict) -> int:
        import wandb
        folder = Path(self.dir).expanduser() if self.dir else run.run_dir
        folder.mkdir(parents=True, exist_ok=True)
        run_id = state.get("run_id") or secrets.token_hex(4)   # W&B's own ids are 8 characters too
        group = f"{run.sweep_dir.parent.name}/{run.sweep_dir.name}" if run.sweep_dir else None
        # no console capture (the progress bar stays ours), no system-metrics sampler, no git
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True,
                                  save_code=False, disable_git=True)
        self.run = wandb.init(project=self.project, entity=self.entity, dir=str(folder), id=run_id,
                              resume="allow", name=run.name, group=group, tags=self.tags,
                              config={k: v for k, v in run.config.items() if k != "logger"},
                              allow_val_change=True, mode=self.mode,
                              settings=settings, reinit="finish_previous")
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")
        held = state.get("epoch", 0)
        if self.mode == "offline" and held:   # what the run's files hold, not what was sent
            held = min(held, _offline_epoch(folder / "wandb", run_id))
        state.update(run_id=run_id, project=self.project, mode=self.mode)
        return held

    def log_epoch(self, row: dict, frame: Path | None) -> None:
        import wandb
        data = {k: v for k, v in row.items() if _number(v)}
        if frame:
            data["latent"] = wandb.Image(str(frame), caption=f"epoch {row['epoch']}")
        self.run.log(data, step=row["epoch"])

    def finish(self, run: RunInfo, report: dict, pictures: list[Path], final: dict) -> None:
        import wandb
        if pictures:
            self.run.log({f"eval/{p.stem}": wandb.Image(str(p)) for p in pictures}, step=final["epoch"])
        self.run.summary.update({f"eval/{k}": v for k, v in flatten(report).items() if _number(v)})
        self.run.summary["best_val_loss"] = final["best_val_loss"]

    def close(self, status: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "FINISHED" else 1)
            self.run = None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _offline_epoch(folder: Path, run_id: str) -> int:
    """The last history step in the offline files of `run_id` under `folder`. A .wandb file is
    W&B's 7-byte header, then LevelDB-log records (crc32, length, type) in 32 KiB blocks, each
    a protobuf Record; a file cut by a kill is read up to its cut."""
    from wandb.proto import wandb_internal_pb2
    last = 0
    for path in folder.glob(f"offline-run-*/run-{run_id}.wandb"):
        data, pos, pending = path.read_bytes(), 7, b""
        while pos + 7 <= len(data):
            room = 32768 - pos % 32768
            if room < 7:                     # a block's tail too short for a header: padding
                pos += room
                continue
            length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            if len(chunk) < length:
                break
            pending = chunk if kind in (1, 2) else pending + chunk   # FULL/FIRST, MIDDLE/LAST
            if kind in (1, 4):
                record = wandb_internal_pb2.Record()
                try:
                    record.ParseFromString(pending)
                except Exception:
                    break
                if record.WhichOneof("record_type") == "history":
                    last = max(last, record.history.step.num)
    return last
