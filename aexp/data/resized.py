"""Datasets seen at another size and channel count, e.g. MNIST as 3x32x32 for the 32x32 models
(ResNet, the 32x32 baseline) that were published on MNIST and CIFAR-10 alike. The resize is done
once, on the resident uint8 tensors, so training batches cost nothing extra."""
import torch
import torch.nn.functional as F

from aexp.data.core import Data, Split
from aexp.data.files import mnist
from aexp.data.storage import resident
from aexp.errors import ConfigError


def resize(data: Data, size: int, channels: int) -> Data:
    """`data` with every image resized to size x size (bilinear, antialiased) and its channels
    repeated from 1 to `channels` (or kept when they already match)."""
    if size < 1 or channels < 1:
        raise ConfigError(f"dataset.size and dataset.channels must be positive, got {size}, {channels}")

    def one(split: Split) -> Split:
        x = resident(split.x)
        if x.shape[1] not in (1, channels):
            raise ConfigError(f"cannot turn {x.shape[1]}-channel images into {channels} channels")
        out = []
        for chunk in x.split(4096):   # bounded memory: float copies of 4,096 images at a time
            f = F.interpolate(chunk.float(), size=(size, size), mode="bilinear",
                              antialias=True, align_corners=False)
            out.append(f.round().clamp(0, 255).to(torch.uint8))
        x = torch.cat(out)
        return Split(x.expand(-1, channels, -1, -1).contiguous(), split.y)

    return Data(data.name, data.kind, one(data.train), one(data.val), one(data.test),
                num_classes=data.num_classes, classes=data.classes)


def mnist32(root: str = "data", val_size: int = 5000, seed: int = 0, download: bool = True,
            size: int = 32, channels: int = 3) -> Data:
    """MNIST from `<root>/MNIST/raw/` as `channels` x `size` x `size` images (3x32x32 by default)."""
    return resize(mnist(root, val_size, seed, download), size, channels)
