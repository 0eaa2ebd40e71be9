"""Checkpoints: written atomically (temp file, fsync, rename), read with `weights_only=True` so a
crafted file cannot run code. A checkpoint holds model/optimizer/scheduler state, the epoch,
RNG states and the resolved config, so it describes itself."""
from pathlib import Path

import torch

from aexp.errors import CheckpointError
from aexp.io import atomic_write

FORMAT = "aexp-checkpoint-1"


def save(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, corrupt, or holding objects weights_only refuses
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {first[:200]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an aexp checkpoint")
    return state
