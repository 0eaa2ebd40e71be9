"""The classic datasets in torchvision's on-disk formats: MNIST and Fashion-MNIST (IDX files)
and CIFAR-10 (pickled batches). Each is one uint8 tensor over a memory-mapped file (the extracted
IDX files; CIFAR-10's images unpickled once into a .npy cache), placed where `dataset.storage`
says when the run starts (aexp.data.storage); missing files are
downloaded through torchvision when online, and offline and missing gives one line naming the
files and where they go."""
import gzip
import hashlib
import json
import math
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import torch

from aexp.data.core import Data, Split, carve
from aexp.data.storage import Stored, as_tensor, check_mode, memory_mapped
from aexp.errors import DataError
from aexp.io import atomic_write, cache_root

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def mnist(root: str = "data", val_size: int = 5000, seed: int = 0, download: bool = True,
          storage: str = "auto", memory_budget: float | None = None) -> Data:
    """MNIST from `<root>/MNIST/raw/` (the four IDX files, `.gz` or extracted). `storage`:
    where the images live while training (aexp.data.storage; `disk` reads the extracted IDX
    files, memory-mapped)."""
    return _idx_dataset("MNIST", "mnist", root, val_size, seed, download,
                        [str(i) for i in range(10)], storage, memory_budget)


def fashion_mnist(root: str = "data", val_size: int = 5000, seed: int = 0,
                  download: bool = True, storage: str = "auto",
                  memory_budget: float | None = None) -> Data:
    """Fashion-MNIST from `<root>/FashionMNIST/raw/` (same IDX file names as MNIST)."""
    return _idx_dataset("FashionMNIST", "fashion_mnist", root, val_size, seed, download,
                        FASHION_CLASSES, storage, memory_budget)


def _idx_dataset(cls_name, name, root, val_size, seed, download, classes, storage,
                 memory_budget) -> Data:
    raw = Path(root).expanduser() / cls_name / "raw"
    have = lambda f: (raw / f).is_file() or (raw / f"{f}.gz").is_file()
    if not all(have(f) for f in MNIST_FILES):
        files = ", ".join(f"{f}.gz" for f in MNIST_FILES)
        _download(cls_name, raw.parent.parent, download,
                  f"{cls_name} not found and could not be downloaded: put {files} in {raw} "
                  f"(set dataset.root to the folder holding {cls_name}/raw)")
    train_x, train_y, test_x, test_y = (read_idx(raw, f) for f in MNIST_FILES)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise DataError(f"{raw}: image and label files disagree in length")
    whole = Split(Stored(train_x.unsqueeze(1)), train_y.long())
    fit, val = carve(whole, val_size, seed)
    return Data(name, "image", fit, val, Split(Stored(test_x.unsqueeze(1)), test_y.long()),
                num_classes=len(classes), classes=classes, storage=check_mode(storage, memory_budget),
                memory_budget=memory_budget)


def read_idx(folder: Path, name: str) -> torch.Tensor:
    """Read an IDX file (uint8 payload) as a tensor. A `.gz` alone is extracted beside itself
    once (when the folder is writable), so later runs skip the decompression and map the
    file: the tensor reads from it only what is used (see aexp.data.storage)."""
    path, gz = folder / name, folder / f"{name}.gz"
    if path.is_file():
        buf = np.memmap(path, np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
    else:
        try:
            payload = gzip.decompress(gz.read_bytes())
        except (OSError, EOFError) as e:
            raise DataError(f"{gz} is not a readable gzip file ({e})") from None
        try:
            atomic_write(path, lambda f: f.write(payload))
        except OSError:
            pass  # read-only folder: decompress again next time
        buf = np.frombuffer(bytearray(payload), np.uint8)
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of bytes")
    ndim = int(buf[3])
    dims = struct.unpack(f">{ndim}I", buf[4:4 + 4 * ndim].tobytes())
    data = buf[4 + 4 * ndim:]
    if data.size != math.prod(dims):
        raise DataError(f"{path} is truncated ({data.size} of {math.prod(dims)} bytes)")
    return as_tensor(data.reshape(dims))


CIFAR_DIR = "cifar-10-batches-py"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def cifar10(root: str = "data", val_size: int = 5000, seed: int = 0, download: bool = True,
            storage: str = "auto", memory_budget: float | None = None,
            cache_dir: str | None = None) -> Data:
    """CIFAR-10 from `<root>/cifar-10-batches-py/` (torchvision's layout: data_batch_1..5,
    test_batch, batches.meta), or from `<root>/cifar-10-python.tar.gz`, extracted once. The
    unpickled images are kept as a memory-mappable cache file (in `cache_dir`), which later
    runs map instead of unpickling, and `storage=disk` reads per batch."""
    check_mode(storage, memory_budget)
    root = Path(root).expanduser()
    folder = root / CIFAR_DIR
    needed = (*CIFAR_TRAIN, "test_batch")
    if not all((folder / f).is_file() for f in needed):
        if (root / CIFAR_ARCHIVE).is_file():
            try:
                with tarfile.open(root / CIFAR_ARCHIVE) as tar:
                    # the "data" filter refuses absolute paths and links out of `root`
                    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                    tar.extractall(root, **safe)
            except (OSError, tarfile.TarError) as e:
                raise DataError(f"cannot extract {root / CIFAR_ARCHIVE}: {e}") from None
        else:
            _download("CIFAR10", root, download,
                      f"CIFAR-10 not found and could not be downloaded: put {CIFAR_ARCHIVE} (or "
                      f"the extracted {CIFAR_DIR}/ with {', '.join(needed)}) in {root} "
                      f"(set dataset.root to that folder)")
        missing = [f for f in needed if not (folder / f).is_file()]
        if missing:
            raise DataError(f"{folder} lacks {', '.join(missing)}")
    whole, test = (_cifar_split(folder, names, cache_dir) for names in (CIFAR_TRAIN, ("test_batch",)))
    classes = [str(i) for i in range(10)]
    if (folder / "batches.meta").is_file():
        classes = list(_unpickle(folder / "batches.meta").get("label_names", classes))
    fit, val = carve(whole, val_size, seed)
    return Data("cifar10", "image", fit, val, test, num_classes=len(classes), classes=classes,
                storage=storage, memory_budget=memory_budget)


def _cifar_split(folder: Path, names, cache_dir) -> Split:
    """The images of the batch files `names` as a Stored view of their cache file (written
    once, keyed by the files' sizes and times), and their labels."""
    stats = [(n, (folder / n).stat().st_size, (folder / n).stat().st_mtime_ns) for n in names]
    key = hashlib.sha256(json.dumps([str(folder.resolve()), stats]).encode()).hexdigest()[:20]
    path = cache_root(cache_dir) / f"cifar10-{key}.npy"
    labels = path.with_suffix(".labels.npy")
    if path.is_file() and labels.is_file():
        try:
            x, y = memory_mapped(path), torch.from_numpy(np.load(labels)).long()
            if x.dtype == torch.uint8 and tuple(x.shape[1:]) == (3, 32, 32) and len(x) == len(y):
                return Split(Stored(x), y)
        except (OSError, ValueError):
            pass            # a damaged cache is rebuilt
    batches = [_cifar_batch(folder / n) for n in names]
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    try:
        atomic_write(labels, lambda f: np.save(f, y.numpy()))
        atomic_write(path, lambda f: np.save(f, x.numpy()))
    except OSError:         # an unwritable cache: the images stay in memory
        return Split(Stored(x), y)
    return Split(Stored(memory_mapped(path)), y)


class _NumpyOnly(pickle.Unpickler):
    """CIFAR batches are pickles; allow only the numpy types they hold, so a crafted file
    cannot run code."""

    def find_class(self, module, name):
        if module.split(".")[0] == "numpy" or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)     # (_codecs.encode: bytes in protocol 2)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _NumpyOnly(f, encoding="latin1").load()
    except Exception as e:
        raise DataError(f"{path} is not a readable CIFAR batch ({type(e).__name__}: {e})") from None


def _cifar_batch(path: Path) -> tuple:
    d = _unpickle(path)
    try:
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = torch.as_tensor(np.asarray(d["labels"]), dtype=torch.long)
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(f"{path} is not a CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
    return torch.from_numpy(x.copy()), y


def _download(cls_name: str, root: Path, download: bool, missing: str) -> None:
    """Fetch a dataset through torchvision into `root`, or raise `missing` as one line."""
    if not download:
        raise DataError(missing)
    import torchvision
    try:
        getattr(torchvision.datasets, cls_name)(str(root), download=True)
    except Exception as e:
        raise DataError(f"{missing} ({type(e).__name__})") from None
