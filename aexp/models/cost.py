"""What a model's step costs on the CPU, counted rather than timed (counting is cheap and gives
the same answer on a busy machine as on a quiet one), and the memory layout that follows from it.

`profile` runs one forward pass on one sample under torch's FLOP counter: the floating-point
operations of every matmul and convolution (multiply and add counted apart), the convolutions'
share, and how many values normalisation layers (BatchNorm, InstanceNorm, GroupNorm) touch.
`channels_last` decides `train.channels_last: auto` from it; `aexp.run.threads` decides
`train.threads: auto` from the FLOPs."""
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

CONVS = (nn.Conv2d, nn.ConvTranspose2d)
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm)   # BatchNorm*d and InstanceNorm*d share _NormBase

# train.channels_last=auto on the CPU: NHWC when the convolutions do at least this many FLOPs per
# value a normalisation layer touches. channels_last speeds convolutions up (oneDNN's NHWC
# kernels) and slows BatchNorm down: at 1 thread on this project's 2-core EPYC, BatchNorm
# forward+backward on 64x12x28x28 took 2.00 ms NHWC vs 1.76 ms NCHW (0.8-0.9x at 4-64 channels,
# 0.5x at 128; worse still at 2 threads), while a 3x3 conv at the same shape took 3.2 vs 7.5 ms.
# Whole training steps at 1 thread, NCHW / NHWC: ConvAE [8,16] and [12,24] on 1x28x28 0.97x
# (128 and 179 FLOPs per normalised value), [16,32] 0.99x (230), [32,64] 1.04x (435); ConvAE on
# 3x64x64 [12,24,48] 1.09x (295); pooling_cnn width 8 1.59x (302); baseline32 [12,24,48] 1.42x
# (242). The ratio sorts these better than the narrowest width does (pooling_cnn at width 8
# gains 1.6x), and below 200 the measured gain was at most 3% either way.
MIN_CONV_FLOPS_PER_NORM_VALUE = 200


@dataclass(frozen=True)
class Profile:
    flops: float          # forward FLOPs per sample (matmuls and convolutions)
    conv_flops: float     # of which convolutions
    norm_values: float    # values per sample passing through normalisation layers


def has_convs(model: nn.Module) -> bool:
    return any(isinstance(m, CONVS) for m in model.modules())


# A run's start asks three times (train.channels_last, train.threads and train.precision, each
# `auto`) about the same model and sample: each count is kept with its model and asked once.
_COUNTED = weakref.WeakKeyDictionary()   # model -> {(shape, dtype, device): Profile | None}


def profile(model: nn.Module, x: torch.Tensor) -> Profile | None:
    """Count one forward pass of `model` on the batch `x` (one sample is enough: the counts
    are per sample; a ResNet-34 AE at 3x218x178, whose training steps take seconds, takes
    0.1-0.3 s here, more on the first call). In eval mode and with the random state put back,
    so counting changes neither BatchNorm's statistics nor anything the run draws later. None
    when the forward fails: the run's preflight check reports that with one line. Counted once
    per model and input shape: the counts depend on the layers and the shape, not the weights."""
    key = (tuple(x.shape), x.dtype, str(x.device))
    counted = _COUNTED.setdefault(model, {})
    if key not in counted:
        counted[key] = _count(model, x)
    return counted[key]


@torch.no_grad()
def _count(model: nn.Module, x: torch.Tensor) -> Profile | None:
    if not len(x):
        return None
    norm = [0]
    count = lambda module, args, out: norm.__setitem__(0, norm[0] + out.numel())
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, NORMS)]
    was = model.training
    model.eval()
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), FlopCounterMode(display=False) as counter:
            model(x)
    except Exception:   # any failure is the preflight check's to report, not this estimate's
        return None
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    total = counter.get_flop_counts().get("Global", {})
    conv = sum(v for op, v in total.items() if "convolution" in str(op))
    n = len(x)
    return Profile(sum(total.values()) / n, conv / n, norm[0] / n)


def channels_last(setting, model: nn.Module, device: torch.device, x: torch.Tensor) -> bool:
    """Store the model NHWC? `setting` is train.channels_last: true, false or auto; `x` an input
    sample. auto: on CUDA, yes for every model with convolutions (tensor cores want NHWC); on
    the CPU, when the convolutions outweigh the normalisation layers (see
    MIN_CONV_FLOPS_PER_NORM_VALUE). A model without convolutions is unchanged either way."""
    if isinstance(setting, bool):
        return setting
    if not has_convs(model):
        return False
    if device.type == "cuda":
        return True
    p = profile(model, x)
    if p is None:
        return False
    return not p.norm_values or p.conv_flops / p.norm_values >= MIN_CONV_FLOPS_PER_NORM_VALUE
