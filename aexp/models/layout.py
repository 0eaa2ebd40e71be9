"""Channels-last (NHWC) models on the CPU, with the BatchNorm layers whose NHWC kernel is slow
computed in NCHW.

`channels_last(model)` stores the model NHWC (train.channels_last, decided by
aexp.models.cost) and hooks every 2-d BatchNorm: in training mode, on the CPU, with more than one
thread and a channel count that is under 32 and not a multiple of 16, the layer's input is
copied to NCHW, normalised there and copied back (and its gradient likewise). Its values are
BatchNorm's own NCHW kernel's, the same as in the model stored NCHW. Under torch.compile nothing
is rerouted (inductor writes its own BatchNorm kernels).

Why: torch's channels-last BatchNorm training kernel on the CPU is many times slower than the
NCHW one when the channels do not fill its vectors. Forward + backward on 128 x C x H x W, 2
threads, Intel Xeon with AMX-BF16 (this project's 2-core machine), NHWC / via NCHW (both
copies included) / NCHW, ms:

    C x H x W    bf16                 fp32
    4 x 32²      2.74 / 1.96 / 0.87   9.35 / 1.93 / 0.84
    8 x 32²     11.74 / 3.35 / 1.20  11.09 / 4.42 / 2.11
    12 x 32²    22.05 / 5.19 / 2.32  16.39 / 6.43 / 2.45
    24 x 32²    12.44 / 10.73 / 3.12 15.55 / 13.63 / 5.34
    16 x 32²     5.02 / 6.81 / 2.36   2.72 / 7.76 / 3.14   (a multiple of 16: NHWC is fine)
    32 x 16²     2.01 / 2.96 / 1.05   1.90 / 3.73 / 1.71
    40 x 16²     4.83 / 4.12 / 1.36   2.87 / 4.66 / 2.08   (a little either way: left NHWC)

At 1 thread the round trip was slower than NHWC, or the same, at every C but 4 (12 x 32²:
bf16 10.09 / 9.92 ms, fp32 7.28 / 11.13 ms), and in eval mode (forward only) it was slower at
every C measured (12 x 64², bf16: 2.00 / 3.09 ms), so neither is rerouted. The whole training step
of the published 32x32 baseline (channels 12 and 24, batch 128, 2 threads): NCHW 39 ms,
NHWC 53 ms, NHWC with these BatchNorms in NCHW 32 ms under bf16 autocast (fp32: 59 / 64 / 48).
"""
import torch
from torch import nn


class _Layout(torch.autograd.Function):
    """A copy into `fmt` whose gradient is copied back into the input's own layout (a plain
    .contiguous() passes the gradient through in whatever layout it comes, and BatchNorm's
    backward with an NCHW input and an NHWC gradient is slower still)."""

    @staticmethod
    def forward(ctx, x, fmt, back):
        ctx.back = back
        return x.contiguous(memory_format=fmt)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=ctx.back), None, None


def reroute(norm: nn.Module, x: torch.Tensor) -> bool:
    """Should this BatchNorm call run in NCHW? (The rule above.)"""
    c = x.shape[1]
    return (norm.training and x.device.type == "cpu" and c < 32 and c % 16 != 0
            and not torch.compiler.is_compiling() and torch.get_num_threads() > 1
            and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last))


def _to_nchw(norm, args):
    x = args[0]
    if x.dim() == 4 and reroute(norm, x):
        norm._aexp_back_to_nhwc = True
        return (_Layout.apply(x, torch.contiguous_format, torch.channels_last),) + tuple(args[1:])
    return None


def _to_nhwc(norm, args, out):
    if norm.__dict__.pop("_aexp_back_to_nhwc", False):
        return _Layout.apply(out, torch.channels_last, torch.contiguous_format)
    return None


def channels_last(model: nn.Module) -> nn.Module:
    """`model` stored NHWC, its 2-d BatchNorms hooked as the module docstring says."""
    model = model.to(memory_format=torch.channels_last)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and not getattr(m, "_aexp_nchw_hooks", False):
            m.register_forward_pre_hook(_to_nchw)
            m.register_forward_hook(_to_nhwc)
            m._aexp_nchw_hooks = True
    return model
