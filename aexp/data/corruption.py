"""Input corruption for denoising autoencoders, built from `conf/corruption/*.yaml`.

A corruption takes a batch of model inputs in [0, 1] and returns a corrupted copy. It is applied
to training batches only, drawn fresh for every batch from torch's global generator (whose
state checkpoints keep), and never to the target: the model learns to undo it.
"""
import torch

from aexp.errors import ConfigError


class Corruption:
    def check(self, in_shape: tuple) -> None:
        """Raise ConfigError when the corruption cannot apply to inputs of `in_shape`."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x


class NoCorruption(Corruption):
    """The input as it is (plain reconstruction)."""


class Dropout(Corruption):
    """Pixel dropout: each pixel (all its channels together) is set to 0 with probability `p`;
    with `rescale`, the survivors are multiplied by 1/(1-p) so the mean input is unchanged."""

    def __init__(self, p: float = 0.5, rescale: bool = False):
        if not 0 <= p < 1:
            raise ConfigError(f"corruption.p must be in [0, 1), got {p}")
        self.p, self.rescale = float(p), bool(rescale)

    def __call__(self, x):
        shape = (x.shape[0], 1, *x.shape[2:]) if x.dim() == 4 else x.shape
        keep = (torch.rand(shape, device=x.device) >= self.p).to(x.dtype)
        return x * keep / (1 - self.p) if self.rescale else x * keep


class Gaussian(Corruption):
    """Additive Gaussian noise of standard deviation `sigma`; with `clip`, the result is
    clamped back to [0, 1] (the range of unit-normalised inputs)."""

    def __init__(self, sigma: float = 0.1, clip: bool = True):
        if sigma < 0:
            raise ConfigError(f"corruption.sigma must be at least 0, got {sigma}")
        self.sigma, self.clip = float(sigma), bool(clip)

    def __call__(self, x):
        noisy = x + self.sigma * torch.randn_like(x)
        return noisy.clamp(0, 1) if self.clip else noisy


class Mask(Corruption):
    """`count` squares of `size` x `size` pixels at random places in each image are set to
    `value` (inpainting-style masking)."""

    def __init__(self, size: int = 8, count: int = 1, value: float = 0.0):
        if size < 1 or count < 1:
            raise ConfigError(f"corruption.size and corruption.count must be at least 1, "
                              f"got {size} and {count}")
        self.size, self.count, self.value = int(size), int(count), float(value)

    def check(self, in_shape):
        if len(in_shape) != 3:
            raise ConfigError(f"corruption=mask needs image inputs, got inputs of shape {in_shape}")
        if self.size > min(in_shape[1:]):
            raise ConfigError(f"corruption.size={self.size} is larger than the images "
                              f"({in_shape[1]}x{in_shape[2]})")

    def __call__(self, x):
        n, _, h, w = x.shape
        top = torch.randint(0, h - self.size + 1, (n, self.count, 1, 1), device=x.device)
        left = torch.randint(0, w - self.size + 1, (n, self.count, 1, 1), device=x.device)
        rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
        inside = ((rows >= top) & (rows < top + self.size)
                  & (cols >= left) & (cols < left + self.size)).any(1, keepdim=True)
        return torch.where(inside, torch.full_like(x, self.value), x)
