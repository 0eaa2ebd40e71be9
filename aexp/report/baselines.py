"""Trivial baselines: what a model has to beat before its numbers mean anything. Each is a
constant prediction computed from the training targets, measured on the same test split with the
same measures as the model, and shown beside it (`eval.json`'s `baseline` section, the eval
table's baseline column, the summary's curves).

- reconstruction: the mean training image (MSE, MAE, PSNR, SSIM), and the classifier's accuracy
  on it: one image, so one predicted class for every test sample;
- colourisation: the median a,b of the training targets (per channel) and the neutral a,b (0.5:
  no colour), each with the true L: accuracy within every bound, the curve, MAE, and the
  classifier's accuracy on L + that constant. A colouriser whose accuracy does not beat the
  median constant has learned nothing the published metric can show."""
import math

import torch

from aexp.data.storage import chunks

MEDIAN_VALUES = 1_000_000   # per channel; beyond that the median is taken over a seeded sample
PERMUTED = 1 << 24          # drawn without replacement up to this many values per channel


@torch.no_grad()
def mean_target(data) -> torch.Tensor:
    """The mean training target, one sample's shape (summed in float64, in chunks)."""
    split, total = data.train, None
    for idx in chunks(split):
        part = data.batch(split, idx)[1].double().sum(0)
        total = part if total is None else total + part
    return (total / len(split)).float()


@torch.no_grad()
def median_target(data, seed: int = 0) -> torch.Tensor:
    """Per-channel median of the training targets' values, [C] (over all samples and pixels, or
    MEDIAN_VALUES of them drawn with `seed`). Only the drawn values are kept, chunk by chunk: a
    large training set never sits in memory whole."""
    split = data.train
    per = math.prod(data.out_shape[1:])              # values per sample and channel
    picks = _picks(len(split) * per, seed)
    values = []
    for idx in chunks(split):
        y = data.batch(split, idx)[1]
        y = y.transpose(0, 1).reshape(y.shape[1], -1).float().cpu()
        if picks is None:
            values.append(y)
            continue
        start = int(idx[0]) * per
        lo, hi = torch.searchsorted(picks, torch.tensor([start, start + y.shape[1]]))
        values.append(y[:, picks[lo:hi] - start])
    return torch.cat(values, 1).median(1).values


def _picks(n: int, seed: int) -> torch.Tensor | None:
    """Sorted positions of the values the median is taken over (None: all of them): a seeded
    draw of MEDIAN_VALUES without replacement up to PERMUTED values, with replacement beyond
    (a permutation of billions of positions would itself outgrow memory)."""
    if n <= MEDIAN_VALUES:
        return None
    g = torch.Generator().manual_seed(seed)
    if n <= PERMUTED:
        return torch.randperm(n, generator=g)[:MEDIAN_VALUES].sort().values
    return torch.randint(n, (MEDIAN_VALUES,), generator=g).sort().values


def constants(data, seed: int = 0) -> dict:
    """{name: one constant target} for the run's task; {} where no baseline is defined."""
    task = data.task.name
    if task == "reconstruct":
        return {"mean_image": mean_target(data).cpu()}
    if task == "colorize":
        shape = tuple(data.out_shape)
        median = median_target(data, seed).view(-1, *[1] * (len(shape) - 1)).expand(shape)
        return {"median_ab": median.clone(), "neutral_ab": torch.full(shape, 0.5)}
    return {}
