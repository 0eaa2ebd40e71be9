"""Load a finished (or interrupted) run: its config, data, model and a checkpoint's weights.
Shared by every command that works on a run folder (eval, explore, summary...)."""
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from aexp import checkpoint
from aexp.errors import AexpError, CheckpointError


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: object          # the run's resolved config (DictConfig)
    state: dict          # the checkpoint
    data: object
    model: object
    loss_fn: object
    device: object


def load_run(run_dir, which: str = "best", device: str = "auto") -> LoadedRun:
    """Rebuild a run from `RUN_DIR/checkpoints/<which>.pt`; the model is in eval mode."""
    from aexp.train import build_parts, resolve_device

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AexpError(f"no such run folder: {run_dir}")
    state = checkpoint.load(run_dir / "checkpoints" / f"{which}.pt")
    cfg = OmegaConf.create(state["config"])
    dev = resolve_device(device)
    data, model, loss_fn = build_parts(cfg, dev)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:   # a checkpoint whose weights are not this model's
        raise CheckpointError(f"{run_dir}: the checkpoint's weights do not fit its model: "
                              f"{str(e).strip().splitlines()[0][:200]}") from None
    model.eval()
    return LoadedRun(run_dir, cfg, state, data, model, loss_fn, dev)
