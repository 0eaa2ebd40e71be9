"""The training loop's pieces, each a plain function `train()` (and `lr_find`) calls: the
preflight check, the step plan (epochs or `train.max_steps`), mixed precision and torch.compile,
progressive resizing, gradient clipping, the per-epoch hook (encoder freezing, loss warm-up),
class labels for the loss, and the validation-loss pass."""
import contextlib
import math

import torch
import torch.nn.functional as F

from aexp.errors import AexpError, ConfigError
from aexp.models import call


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
    max_steps = train_cfg.get("max_steps")   # checked (>= 1) by build.check_config
    if max_steps is None:
        return train_cfg.epochs, steps, train_cfg.epochs * steps
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
    bottleneck built for one size). The stages' own values are checked by build.check_config."""
    if not stages:
        return
    idx = torch.arange(2, device=data.train.x.device)
    x, y = data.batch(data.train, idx)
    was = model.training
    model.eval()
    try:
        for stage in stages:
            size = progressive_size([stage], 1)
            xs, ys = resize(x, y, size)
            try:
                out = call(model, xs, data.train.labels(idx))
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


def start_epoch(model, loss_fn, epoch: int | None) -> None:
    """Tell the model and loss which epoch starts (None: outside a training run, i.e. the final
    state): a pretrained encoder may stay frozen for the first epochs; a loss weight may warm up."""
    model.start_epoch(epoch)
    loss_fn.set_epoch(epoch)


def autocast(precision: str, device: torch.device):
    """The context the training forward and loss run in: bf16 autocast, or nothing (fp32).
    train() passes the precision aexp.run.precision decided (`auto` on the CPU: bf16 where the
    CPU has AMX-BF16, the step is big enough and torch uses one thread); `auto` given here is
    the plain rule, bf16 on CUDA, fp32 on the CPU. One code path: the loop always enters this
    context."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def compiled(net: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """`torch.compile(net)` when `train.compile` is on (the first steps pay the compilation)."""
    return torch.compile(net) if enabled else net


def preflight(model, loss_fn, data) -> None:
    """One forward and loss on two samples, so a model that cannot take the data's shape, or a
    loss that does not fit the model, fails before any work with one clear line."""
    idx = torch.arange(min(2, len(data.train)), device=data.train.x.device)
    x, y = data.batch(data.train, idx)
    try:
        with torch.no_grad():
            lab = data.train.labels(idx)
            out = call(model, x, lab)
            terms = loss_fn(out, x, y, model, labels=lab)
    except AexpError:
        raise
    except RuntimeError as e:
        raise ConfigError(f"model {type(model).__name__} cannot take {data.name} data of shape "
                          f"{tuple(data.in_shape)}: {str(e).splitlines()[0]}") from None
    if out.x_hat.shape != y.shape:
        raise ConfigError(f"model output shape {tuple(out.x_hat.shape[1:])} differs from the "
                          f"target shape {tuple(y.shape[1:])}")
    if not all(torch.isfinite(v) for v in terms.values()):
        raise ConfigError("the loss is not finite on the first batch")


@torch.no_grad()
def validation_loss(model, loss_fn, data, split, batch_size: int) -> dict:
    """Batch-size-weighted mean of every loss term over a split (model in eval mode)."""
    model.eval()
    sums, n = {}, len(split)
    split.plan(torch.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size))
    for i in range(0, n, batch_size):
        idx = torch.arange(i, min(i + batch_size, n), device=split.x.device)
        x, y = data.batch(split, idx)
        lab = split.labels(idx)
        for k, v in loss_fn(call(model, x, lab), x, y, model, labels=lab).items():
            sums[k] = sums.get(k, 0.0) + v.detach() * len(x)
    model.train()
    return {k: float(v) / n for k, v in sums.items()}
