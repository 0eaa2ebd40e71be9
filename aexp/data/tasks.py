"""Tasks: how a stored sample becomes the model's (input, target) pair, and how an (input,
prediction) pair is turned back into RGB pictures. Built from `conf/task/*.yaml`.

Every task shares the same steps, in this order (see `Data.batch`):
  training batches only: random flips, then (`binarize`) dynamic binarisation, each pixel
  redrawn ~ Bernoulli(intensity) every time the sample is drawn; both applied to the sample
  before the pair is formed, so input and target always agree;
  `pair`: the task's own split of the sample into input and target (values in [0, 1]);
  input normalisation (`unit` = keep [0, 1], `none` = the stored values, e.g. 0..255 for
  8-bit images, `standard` = per-channel mean/std of the training inputs). The target is never
  normalised, so sigmoid outputs and BCE keep working.
"""
import torch

from aexp.data.color import lab_unit_to_rgb, rgb_to_lab_unit
from aexp.data.storage import chunks
from aexp.errors import ConfigError

NORMALIZATIONS = ("unit", "none", "standard")


class Task:
    name = "task"

    def __init__(self, normalize: str = "unit", hflip: bool = False, vflip: bool = False,
                 binarize: bool = False):
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"task.normalize must be one of {', '.join(NORMALIZATIONS)}, "
                              f"got '{normalize}'")
        self.normalize_mode, self.hflip, self.vflip = normalize, bool(hflip), bool(vflip)
        self.binarize = bool(binarize)
        self.mean = self.std = None    # per input channel, [1, C, 1, ...]; None = identity

    # -- the task's own part -------------------------------------------------------------
    def check(self, data) -> None:
        """Raise ConfigError when the task cannot work on `data`."""

    def shapes(self, shape: tuple) -> tuple:
        """(input shape, target shape) for a stored sample of `shape`."""
        return shape, shape

    def pair(self, x: torch.Tensor) -> tuple:
        """(input, target) from samples `x` in [0, 1]."""
        return x, x

    def rgb(self, x: torch.Tensor, y: torch.Tensor, decode) -> torch.Tensor:
        """RGB pictures from an un-normalised input `x` and a target-like `y`."""
        raise NotImplementedError

    # -- shared steps ------------------------------------------------------------------------
    def setup(self, data) -> None:
        """Check the task fits the data, and fit the normalisation on the training inputs."""
        if (self.hflip or self.vflip) and data.train.x.dim() != 4:
            raise ConfigError(f"task flips need image data; {data.name} holds vectors")
        if self.binarize and data.train.x.dim() != 4:
            raise ConfigError(f"task.binarize needs image data; {data.name} holds vectors")
        if self.binarize and data.encoding != "rgb":
            raise ConfigError(f"task.binarize draws pixels from their [0, 1] intensities; set "
                              f"dataset.encoding=rgb (got {data.encoding})")
        self.check(data)
        if self.normalize_mode == "unit":
            self.mean = self.std = None
            return
        shape = (1, -1) + (1,) * (data.train.x.dim() - 2)
        if self.normalize_mode == "none":   # back to the stored scale
            scale = 255.0 if data.train.x.dtype == torch.uint8 else 1.0
            channels = self.shapes(tuple(data.train.x.shape[1:]))[0][0]
            self.mean = torch.zeros(channels).view(shape)
            self.std = torch.full((channels,), 1 / scale).view(shape)
            return
        total = total_sq = 0.0
        count = 0
        for idx in chunks(data.train):      # chunked: a float copy of all would be large
            x = self.pair(data.encode(_unit(data.train.x[idx])))[0].double()
            dims = [0] + list(range(2, x.dim()))
            total, total_sq = total + x.sum(dims), total_sq + (x * x).sum(dims)
            count += x.numel() // x.shape[1]
        mean = total / count
        std = (total_sq / count - mean * mean).clamp(min=0).sqrt().clamp(min=1e-6)
        self.mean, self.std = mean.float().view(shape), std.float().view(shape)

    def to(self, device) -> "Task":
        if self.mean is not None:
            self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random horizontal / vertical flips, each with probability 1/2 per sample; then, with
        `binarize`, every pixel drawn anew ~ Bernoulli(intensity) (dynamic binarisation)."""
        for on, axis in ((self.hflip, -1), (self.vflip, -2)):
            if on:
                pick = torch.rand(len(x), device=x.device) < 0.5
                x = torch.where(pick.view(-1, 1, 1, 1), x.flip(axis), x)
        if self.binarize:
            x = torch.bernoulli(x.clamp(0, 1))
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mean is None else (x - self.mean) / self.std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mean is None else x * self.std + self.mean


class Reconstruct(Task):
    """Input = target = the sample (a corruption, when configured, touches the input only)."""
    name = "reconstruct"

    def rgb(self, x, y, decode):
        y = decode(y)
        return y.expand(-1, 3, *y.shape[2:]) if y.shape[1] == 1 else y


class Colorize(Task):
    """Input = the L channel of CIE Lab, target = the a,b channels; each scaled to [0, 1]
    (L / 100, (a + 128) / 255, (b + 128) / 255)."""
    name = "colorize"

    def check(self, data):
        if data.train.x.shape[1] != 3:
            raise ConfigError(f"task=colorize needs colour (3-channel) data; {data.name} has "
                              f"{data.train.x.shape[1]} channel(s)")
        if data.encoding != "rgb":
            raise ConfigError(f"task=colorize makes its own Lab input; set dataset.encoding=rgb "
                              f"(got {data.encoding})")

    def shapes(self, shape):
        return (1, *shape[1:]), (2, *shape[1:])

    def pair(self, x):
        lab = rgb_to_lab_unit(x)
        return lab[:, :1], lab[:, 1:]

    def rgb(self, x, y, decode):
        return lab_unit_to_rgb(torch.cat([x, y], 1))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()
