"""The run's trackers as one object, the one the training loop and the job call (see the
package docstring, aexp/run/trackers/__init__.py): each call guarded, the state kept in
RUN_DIR/trackers.json."""
import json
from pathlib import Path

from aexp.assemble import build
from aexp.errors import Interrupted
from aexp.io import atomic_write
from aexp.run.trackers.base import CSV, RunInfo, Tracker

STATE = "trackers.json"


class Trackers:
    """The run's trackers, each guarded (see the module docstring). `enabled=False` (DDP ranks
    other than 0) builds none."""

    def __init__(self, node=None, run_dir: Path | None = None, enabled: bool = True, warn=print):
        built = {str(k): build(v) for k, v in (node or {}).items()} if enabled else {}
        self.members = {k: t for k, t in built.items() if type(t) is not CSV}
        self.run_dir, self.warn, self.run, self.over = Path(run_dir or "."), warn, None, False
        self.states: dict[str, dict] = {}     # trackers.json: run ids, "epoch" = last logged
        self.stepping = {k: t.every_steps for k, t in self.members.items() if t.every_steps}

    def start(self, config: dict, rows: list[dict], epoch: int, step: int) -> None:
        """Open every tracker on the run as restored (`epoch` epochs and `step` steps done,
        `rows` its metrics), then log what a tracker lacks of it: the frame before training for
        a new tracker run, epochs a kill kept from it. A run started over (resume=false) starts
        new tracker runs."""
        if not self.members:
            return
        self.run = RunInfo(self.run_dir, config, list(rows), epoch, step)
        self.over = str(config.get("resume")).lower() in ("false", "no", "off")
        saved = {} if self.over else self._read_state()
        for name, t in list(self.members.items()):
            state = dict(saved.get(name) or {})
            self.states[name] = state
            held = self._call(name, t.start, self.run, state)
            if name not in self.members:
                continue
            state["epoch"] = held
            if name not in saved and held == 0 and self.run.frame(0):
                self._call(name, t.log_epoch, {"epoch": 0}, self.run.frame(0))
            for row in self.run.rows:
                if held < row["epoch"] <= epoch:
                    self._log(name, t, row)
        self._save_state()

    def log_step(self, step: int, loss) -> None:
        """After an optimiser step (`step` steps done in all): the loss tensor is read only for
        a tracker whose step this is, so most steps cost no host sync."""
        for name, every in list(self.stepping.items()):
            if step % every == 0 and name in self.members:
                self._call(name, self.members[name].log_step, step, float(loss.detach()))

    def log_epoch(self, row: dict) -> None:
        """A metrics row (and the epoch's frame, when one was drawn), to every tracker that does
        not hold that epoch yet. Called before the epoch's checkpoint: a kill in between makes
        the resumed run redo the epoch, which each tracker then replaces or skips (its `start`)."""
        if not self.members:
            return
        self.run.rows.append(row)
        for name, t in list(self.members.items()):
            if row["epoch"] > self.states[name].get("epoch", 0):
                self._log(name, t, row)
        self._save_state()

    def finish(self) -> None:
        """After the evaluation: eval.json's numbers, the pictures, the hyperparameters with
        the final metrics; then every tracker run is closed as finished."""
        if not self.members or not self.run or not self.run.rows:
            return self.close("FINISHED")
        path = self.run_dir / "eval.json"
        try:
            report = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            report = {}
        pictures = sorted((self.run_dir / "pictures").glob("*.png"))
        final = {**self.run.rows[-1], "best_val_loss": min(r["val_loss"] for r in self.run.rows)}
        for name, t in list(self.members.items()):
            self._call(name, t.finish, self.run, report, pictures, final)
        self._save_state()
        self.close("FINISHED")

    def close(self, status: str) -> None:
        for name, t in list(self.members.items()):
            self._call(name, t.close, status)
        self.members.clear()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # stopped by a signal (submitit's requeue exits through SystemExit): to be resumed
        stopped = exc_type is not None and issubclass(exc_type, (Interrupted, KeyboardInterrupt, SystemExit))
        self.close("FINISHED" if exc_type is None else "KILLED" if stopped else "FAILED")

    def _log(self, name: str, t: Tracker, row: dict) -> None:
        self._call(name, t.log_epoch, row, self.run.frame(row["epoch"]))
        if name in self.members:
            self.states[name]["epoch"] = row["epoch"]

    def _call(self, name: str, method, *args):
        """A tracker's call; a failure drops that tracker with one warning line."""
        try:
            return method(*args)
        except Exception as e:
            tracker = self.members.pop(name, None)
            self.stepping.pop(name, None)
            text = " ".join(str(e).split())[:200] or type(e).__name__
            self.warn(f"aexp: warning: the {name} tracker failed ({type(e).__name__}: {text}); "
                      f"training goes on without it")
            try:
                if tracker is not None:
                    tracker.close("FAILED")
            except Exception:
                pass
            return 0

    def _read_state(self) -> dict:
        path = self.run_dir / STATE
        try:
            state = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            state = {}
        return state if isinstance(state, dict) else {}

    def _save_state(self) -> None:
        """trackers.json: each tracker's run identity and last logged epoch (atomic: a kill
        leaves the old file or the new one). Entries of trackers not in this run's list stay,
        unless the run started over."""
        state = {**({} if self.over else self._read_state()), **{k: self.states[k] for k in self.members}}
        text = json.dumps(state, indent=1, sort_keys=True).encode()
        path = self.run_dir / STATE
        if not path.is_file() or path.read_bytes() != text:
            atomic_write(path, lambda f: f.write(text))
