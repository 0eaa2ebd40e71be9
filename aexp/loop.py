"""Optional pieces of the training loop, each a plain function `train()` calls: the step plan
(epochs or `train.max_steps`), mixed precision and torch.compile, progressive resizing, gradient
clipping, per-epoch hooks (encoder freezing, loss warm-up) and class labels for the loss."""
import contextlib
import math

import torch
import torch.nn.functional as F

from aexp.errors import ConfigError


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps in one pass. A final batch of one sample would break BatchNorm in
    training mode, so it is folded away."""
    return n // batch_size + (1 if n % batch_size > 1 else 0)


def plan(train_cfg, n: int) -> tuple[int, int, int]:
    """(epochs, steps per epoch, total steps). `max_steps` (when set) decides the length: the
    run takes ceil(max_steps / steps) epochs and stops mid-epoch at max_steps."""
    steps = steps_per_epoch(n, train_cfg.batch_size)
    if steps < 1:
        raise ConfigError(f"the training split of {n} sample(s) gives no batch; use more data")
    max_steps = train_cfg.get("max_steps")
    if max_steps is None:
        return train_cfg.epochs, steps, train_cfg.epochs * steps
    if max_steps < 1:
        raise ConfigError(f"train.max_steps must be at least 1 (or null), got {max_steps}")
    return math.ceil(max_steps / steps), steps, max_steps


def progressive_size(stages, epoch: int):
    """The (H, W) to train at in `epoch` (1-based), or None for the data's own size.
    `stages` is a list of {size, epochs}: e.g. [{size: 16, epochs: 5}] trains at 16x16 for
    epochs 1-5, then at full size."""
    end = 0
    for stage in stages or ():
        end += stage["epochs"]
        if epoch <= end:
            size = stage["size"]
            return (size, size) if isinstance(size, int) else tuple(size)
    return None


def resize(x, y, size):
    """Input and target resized to `size` (bilinear, antialiased), for progressive resizing."""
    if size is None:
        return x, y
    if x.dim() != 4:
        raise ConfigError("train.progressive needs image data")
    down = lambda t: F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    return down(x), down(y)


@torch.no_grad()
def check_progressive(model, data, stages) -> None:
    """Fail before training when the model cannot train at a progressive size (e.g. a dense
    bottleneck built for one size)."""
    if not stages:
        return
    for stage in stages:
        if stage.get("epochs", 0) < 1 or stage.get("size") is None:
            raise ConfigError(f"train.progressive stages need a size and epochs >= 1, got {dict(stage)}")
    x, y = data.batch(data.train, torch.arange(2, device=data.train.x.device))
    was = model.training
    model.eval()
    try:
        for stage in stages:
            size = progressive_size([stage], 1)
            xs, ys = resize(x, y, size)
            try:
                out = model(xs)
            except RuntimeError as e:
                raise ConfigError(f"model {type(model).__name__} cannot train at {size[0]}x{size[1]} "
                                  f"(train.progressive): {str(e).splitlines()[0]}") from None
            if out.x_hat.shape != ys.shape:
                raise ConfigError(f"model {type(model).__name__} gives {tuple(out.x_hat.shape[1:])} "
                                  f"for {size[0]}x{size[1]} input (train.progressive needs a model "
                                  f"that keeps the input size, e.g. conv without latent_dim)")
    finally:
        model.train(was)


def clip_gradients(model, max_norm) -> None:
    """Clip the global gradient norm to `max_norm` (null = off)."""
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def start_epoch(model, loss_fn, epoch: int) -> None:
    """Tell the model and loss which epoch starts: a pretrained encoder may stay frozen for the
    first epochs; a loss weight may warm up."""
    if hasattr(model, "start_epoch"):
        model.start_epoch(epoch)
    if hasattr(loss_fn, "set_epoch"):
        loss_fn.set_epoch(epoch)


def labels(split, idx):
    """The class labels of the samples `idx` (None for unlabelled data)."""
    return None if split.y is None else split.y[idx]


PRECISIONS = ("auto", "fp32", "bf16")


def autocast(precision: str, device: torch.device):
    """The context the training forward and loss run in: bf16 autocast, or nothing (fp32).
    `auto` means bf16 on CUDA (its tensor cores) and fp32 on the CPU, where bf16 matmuls are
    rarely faster. One code path: the loop always enters this context."""
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def compiled(net: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """`torch.compile(net)` when `train.compile` is on (the first steps pay the compilation)."""
    return torch.compile(net) if enabled else net
