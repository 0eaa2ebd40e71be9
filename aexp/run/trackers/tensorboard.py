"""TensorBoard (`logger=[csv,tensorboard]`): event files in RUN_DIR/tb/, written with
torch.utils.tensorboard. Per epoch, at step = epoch: every metrics.csv column as a scalar and the
latent frame as an image (epoch 0 = before training). At the end: eval.json's numbers and the
pictures (`eval/...`), and the run's hyperparameters with its final metrics, so TensorBoard's
HParams view compares the jobs of a sweep (`tensorboard --logdir multirun/<sweep>`).

The training loss every `every_steps` optimiser steps goes to RUN_DIR/tb/steps/ (step = steps
done), a run of its own: TensorBoard forgets a resumed run's stale events by step ("purge"), and
one step axis per event folder keeps that exact.

Resume: each event folder is reopened with purge_step = the first step the resumed run writes
again, so events a killed run wrote after its checkpoint are hidden from TensorBoard; every epoch
is flushed to disk before the checkpoint that commits it, so none goes missing."""
import io
from pathlib import Path

from PIL import Image

from aexp.io import flatten
from aexp.run.trackers.base import RunInfo, Tracker, need

# final metrics shown in the HParams view beside eval.json's numbers
FINAL = ("train_loss", "val_loss", "best_val_loss")


class TensorBoard(Tracker):

    def __init__(self, every_steps: int = 50):
        if not isinstance(every_steps, int) or isinstance(every_steps, bool) or every_steps < 0:
            raise ValueError(f"logger.tensorboard.every_steps must be an integer >= 0, got {every_steps!r}")
        need("tensorboard", "tensorboard")   # torch's writer imports it only when first used
        self.every_steps = every_steps
        self.writer = self.steps = None

    def start(self, run: RunInfo, state: dict) -> int:
        from torch.utils.tensorboard import SummaryWriter
        # a new tracker run hides whatever an earlier run in this folder left (resume=false)
        held = min(state.get("epoch", 0), run.epoch) if state else 0
        steps_done = run.step if state else 0
        self.writer = SummaryWriter(str(run.run_dir / "tb"), purge_step=held + 1 if state else 0)
        if self.every_steps:
            self.steps = SummaryWriter(str(run.run_dir / "tb" / "steps"), purge_step=steps_done + 1)
        state.setdefault("hparams", False)
        self.state = state
        return held

    def log_step(self, step: int, loss: float) -> None:
        self.steps.add_scalar("train_loss_step", loss, step)

    def log_epoch(self, row: dict, frame: Path | None) -> None:
        epoch = row["epoch"]
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, epoch)
        if frame:
            self._image("latent", frame, epoch)
        self.writer.flush()     # on disk before the checkpoint that commits this epoch
        if self.steps:
            self.steps.flush()

    def finish(self, run: RunInfo, report: dict, pictures: list[Path], final: dict) -> None:
        from torch.utils.tensorboard.summary import hparams
        epoch = final["epoch"]
        scores = {f"eval/{k}": v for k, v in flatten(report).items() if _number(v)}
        for key, value in scores.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.add_scalar("best_val_loss", final["best_val_loss"], epoch)
        for path in pictures:
            self._image(f"eval/{path.stem}", path, epoch)
        if not self.state["hparams"]:   # once per run: the view reads the first record
            metrics = {k: final[k] for k in FINAL if _number(final.get(k))} | scores
            hp = {k: _hparam(v) for k, v in run.settings().items()}
            for summary in hparams(hp, metrics):
                self.writer.file_writer.add_summary(summary, epoch)
            self.state["hparams"] = True
        self.writer.flush()

    def close(self, status: str) -> None:
        for w in (self.writer, self.steps):
            if w is not None:
                w.close()
        self.writer = self.steps = None

    def _image(self, tag: str, path: Path, step: int) -> None:
        """A PNG as it is on disk (no decoding and re-encoding; only its size is read)."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}.get(im.mode, 3)
        image = Summary.Image(height=h, width=w, colorspace=channels, encoded_image_string=data)
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _hparam(v):
    """HParams take numbers, strings and booleans: other values (lists, null) as text."""
    return v if isinstance(v, (int, float, str, bool)) else str(v)
