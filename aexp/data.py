"""Datasets as tensors. Small datasets are decoded once into one tensor (uint8 for images,
float for colours), moved to the training device, and batched by index: no DataLoader and no
per-sample Python in the training loop."""
import gzip
import math
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from aexp.checkpoint import atomic_write
from aexp.errors import DataError


@dataclass
class Split:
    x: torch.Tensor                 # uint8 [N, C, H, W] for images, float [N, D] for vectors
    y: torch.Tensor | None = None   # int64 class labels [N], when the data has them

    def __len__(self):
        return len(self.x)


@dataclass
class Data:
    """A dataset ready for training: three splits and the facts models are built from."""
    name: str
    kind: str                       # "colors" (points coloured by their own value) or "image"
    train: Split
    val: Split
    test: Split
    num_classes: int | None = None
    classes: list = field(default_factory=list)

    @property
    def in_shape(self) -> tuple:
        return tuple(self.train.x.shape[1:])

    @property
    def out_shape(self) -> tuple:
        return self.in_shape

    def batch(self, split: Split, idx=None, train: bool = False) -> tuple:
        """(model input, target) as floats for the samples `idx` of `split` (all when None).
        `train` marks training batches (where augmentation or input corruption belong)."""
        x = as_float(split.x if idx is None else split.x[idx])
        return x, x

    def to(self, device) -> "Data":
        move = lambda s: Split(s.x.to(device), None if s.y is None else s.y.to(device))
        return replace(self, train=move(self.train), val=move(self.val), test=move(self.test))


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Model input from stored data: uint8 images -> float in [0, 1]; floats pass through."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def carve(split: Split, size: int, seed: int) -> tuple[Split, Split]:
    """Split off `size` samples (chosen by a fixed seed) as validation; return (rest, val)."""
    n = len(split)
    if not 0 < size < n:
        raise DataError(f"validation size {size} leaves an empty split of {n} training samples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    pick = lambda idx: Split(split.x[idx], None if split.y is None else split.y[idx])
    return pick(perm[size:]), pick(perm[:size])


def colors(n_train: int = 10000, n_val: int = 2000, n_test: int = 2000, seed: int = 0) -> Data:
    """Uniform random RGB colours in [0, 1]^3 (synthetic, no download)."""
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if n < 1:
            raise DataError(f"dataset.{name} must be at least 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    draw = lambda n: Split(torch.rand(n, 3, generator=g))
    return Data("colors", "colors", draw(n_train), draw(n_val), draw(n_test))


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def mnist(root: str = "data", val_size: int = 5000, seed: int = 0, download: bool = True) -> Data:
    """MNIST from `<root>/MNIST/raw/` (the four IDX files, `.gz` or extracted). Missing files are
    downloaded through torchvision when online; offline and missing gives one line naming the
    files and where they go."""
    return _idx_dataset("MNIST", "mnist", root, val_size, seed, download,
                        classes=[str(i) for i in range(10)])


def _idx_dataset(cls_name, name, root, val_size, seed, download, classes) -> Data:
    raw = Path(root).expanduser() / cls_name / "raw"
    have = lambda f: (raw / f).is_file() or (raw / f"{f}.gz").is_file()
    if not all(have(f) for f in MNIST_FILES):
        if not download:
            raise DataError(_missing(cls_name, raw))
        import torchvision
        try:
            getattr(torchvision.datasets, cls_name)(str(raw.parent.parent), download=True)
        except Exception as e:
            raise DataError(f"{_missing(cls_name, raw)} ({type(e).__name__})") from None
    train_x, train_y, test_x, test_y = (read_idx(raw, f) for f in MNIST_FILES)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise DataError(f"{raw}: image and label files disagree in length")
    whole = Split(train_x.unsqueeze(1), train_y.long())
    fit, val = carve(whole, val_size, seed)
    return Data(name, "image", fit, val, Split(test_x.unsqueeze(1), test_y.long()),
                num_classes=len(classes), classes=classes)


def read_idx(folder: Path, name: str) -> torch.Tensor:
    """Read an IDX file (uint8 payload) as a tensor. A `.gz` alone is extracted beside itself
    once (when the folder is writable), so later runs skip the decompression."""
    path, gz = folder / name, folder / f"{name}.gz"
    if path.is_file():
        payload = path.read_bytes()
    else:
        payload = gzip.decompress(gz.read_bytes())
        try:
            atomic_write(path, lambda f: f.write(payload))
        except OSError:
            pass  # read-only folder: decompress again next time
    if len(payload) < 4 or payload[:2] != b"\0\0" or payload[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of bytes")
    ndim = payload[3]
    dims = struct.unpack(f">{ndim}I", payload[4:4 + 4 * ndim])
    data = np.frombuffer(payload, np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise DataError(f"{path} is truncated ({data.size} of {math.prod(dims)} bytes)")
    return torch.from_numpy(data.reshape(dims).copy())


def _missing(cls_name, raw: Path) -> str:
    files = ", ".join(f"{f}.gz" for f in MNIST_FILES)
    return (f"{cls_name} not found and could not be downloaded: put {files} in {raw} "
            f"(set dataset.root to the folder holding {cls_name}/raw)")
