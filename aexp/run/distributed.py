"""Data-parallel training under `torchrun` (PyTorch DDP), kept out of the training loop.

`torchrun --nproc_per_node N -m aexp.cli train ...` starts N copies of the same command. Each
process loads the same data and draws the same batch order (same seed), trains on its own slice
of every batch, and DDP averages the gradients, so every optimiser step equals the single-process
step up to floating-point noise. Only rank 0 writes frames, metrics and checkpoints, and all ranks
use rank 0's run folder. Outside torchrun every function here is a no-op."""
import os
from pathlib import Path

import torch
import torch.distributed as dist

from aexp.errors import ConfigError


def requested() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Join the process group torchrun describes (env://): gloo for CPU tensors, NCCL for CUDA."""
    if requested() and not active():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def hydra_overrides() -> list[str]:
    """Extra Hydra overrides for ranks other than 0: no `.hydra/` copy and no `train.log` of
    their own (rank 0 writes both into the shared run folder)."""
    if int(os.environ.get("RANK", "0")) > 0:
        return ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    return []


def agree(run_dir: Path) -> Path:
    """Rank 0's run folder, on every rank. Each rank's Hydra names a folder from its own clock,
    which can differ by a second; a rank whose folder differs removes it (it is empty)."""
    init()
    if not active():
        return Path(run_dir)
    shared = [str(run_dir)]
    dist.broadcast_object_list(shared, src=0)
    if Path(shared[0]) != Path(run_dir):
        try:
            Path(run_dir).rmdir()
        except OSError:
            pass
    return Path(shared[0])


def place(device: torch.device) -> torch.device:
    """Under DDP a CUDA run uses the GPU of this process's local rank."""
    if active() and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def wrap(model: torch.nn.Module, n: int, batch_size: int) -> torch.nn.Module:
    """The module to train through: DDP around `model` when distributed, else `model` itself.
    Refuses batches too small to give every process at least one sample."""
    if not active():
        return model
    last = n % batch_size if n % batch_size > 1 else batch_size
    if min(batch_size, last) < world():
        raise ConfigError(f"a batch of {min(batch_size, last)} samples cannot be split over "
                          f"{world()} processes; raise train.batch_size or use fewer processes")
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        if next(model.parameters()).is_cuda:
            # Batch statistics over the whole batch, as in one process (SyncBatchNorm is CUDA-only).
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [model_device(model).index] if model_device(model).type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def shard(idx: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This process's slice of a batch, and the factor its mean loss is scaled by so that DDP's
    average over processes equals the mean over the whole batch when slices differ in size."""
    if not active():
        return idx, 1.0
    mine = idx.tensor_split(world())[rank()]
    return mine, world() * len(mine) / len(idx)


def all_sum(sums: dict) -> dict:
    """Per-process sums of the epoch's loss terms, added over all processes."""
    if not active() or not sums:
        return sums
    keys = sorted(sums)
    stacked = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64) for k in keys])
    dist.all_reduce(stacked)
    return dict(zip(keys, stacked.unbind()))
