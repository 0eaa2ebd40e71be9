"""Any folder of images as a dataset (faces, flowers, photos): found recursively, decoded once
(in parallel, aexp.data.decode) into a uint8 cache file at a fixed size, so the next run starts
in seconds, and split into train/val/test by fraction with a fixed seed. The splits are views of
the decoded images; where they live while training (`storage`: resident, host memory, or read
per batch from the cache file) is decided when the data is placed (aexp.data.storage)."""
import hashlib
import json
import os
from pathlib import Path

import torch

from aexp.data import decode
from aexp.data.core import Data, Split, take
from aexp.data.storage import Stored, check_mode, memory_mapped
from aexp.errors import ConfigError, DataError
from aexp.io import cache_root

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MODES = {"rgb": "RGB", "gray": "L"}       # config name -> PIL mode


def image_folder(root: str, size=64, mode: str = "rgb", fit: str = "crop", labels: bool = True,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 cache: bool = True, cache_dir: str | None = None, storage: str = "auto",
                 memory_budget: float | None = None, workers: int | None = None,
                 skip_bad: bool = False) -> Data:
    """Images under `root` (recursive; .jpg .jpeg .png .webp; hidden files skipped) at `size`
    (an int or [height, width]), RGB or grayscale. With `labels`, each image's class is the
    name of its top-level sub-folder (images directly in `root` mean an unlabelled folder).
    `storage`/`memory_budget`: where the images live while training (aexp.data.storage);
    `workers`: decoding processes (None = every usable core); `skip_bad`: train without the
    files that cannot be decoded (and say how many) instead of stopping."""
    hw = _size(size)
    if mode not in MODES:
        raise ConfigError(f"dataset.mode must be one of {', '.join(MODES)}, got '{mode}'")
    if fit not in decode.FITS:
        raise ConfigError(f"dataset.fit must be one of {', '.join(decode.FITS)}, got '{fit}'")
    storage_mode = _storage_settings(storage, memory_budget, workers, cache)
    folder = Path(root).expanduser().resolve()
    files = find_images(folder)
    x, bad = _decoded(folder, files, hw, MODES[mode], fit, cache, cache_dir, workers)
    if not skip_bad:
        decode.refuse_bad(bad, folder)
    good = torch.tensor(sorted(set(range(len(files))) - {i for i, _ in bad}), dtype=torch.long)
    if len(good) == 0:
        raise DataError(f"none of the {len(files)} image files in {folder} could be decoded")
    files = [files[i] for i in good.tolist()]
    n = len(files)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    for key, frac, k, what in (("val_fraction", val_fraction, n_val, "validation"),
                               ("test_fraction", test_fraction, n_test, "test")):
        if not 0 < frac < 1 or k < 1:
            raise DataError(f"dataset.{key}={frac} of {n} images leaves the {what} split empty")
    if n - n_val - n_test < 1:
        raise DataError(f"val_fraction={val_fraction} and test_fraction={test_fraction} of {n} "
                        f"images leave the training split empty")

    y, classes = _labels(folder, files) if labels else (None, [])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    pick = lambda idx: Split(x.subset(good[idx]), take(y, idx))
    test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return Data(f"image_folder:{folder.name}", "image", pick(train), pick(val), pick(test),
                num_classes=len(classes) or None, classes=classes, storage=storage_mode,
                memory_budget=memory_budget, skipped=len(bad))


def _storage_settings(mode, memory_budget, workers, cache) -> str:
    if check_mode(mode, memory_budget) == "disk" and not cache:
        raise ConfigError("dataset.storage=disk reads the decoded cache file: set dataset.cache=true")
    if workers is not None and not (isinstance(workers, int) and workers >= 1):
        raise ConfigError(f"dataset.workers must be an int >= 1 or null (every core), got {workers}")
    # without a cache file there is nothing to read per batch: resident in memory
    return mode if cache else ("device" if mode == "auto" else mode)


def _size(size) -> tuple:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, int) and v >= 1 for v in hw):
        raise ConfigError(f"dataset.size must be a positive int or [height, width], got {size}")
    return hw


def find_images(folder: Path) -> list[Path]:
    """Image files under `folder`, sorted (so splits do not depend on the file system)."""
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                (images if name.lower().endswith(EXTENSIONS) else others).append(Path(dirpath) / name)
    if not images and not others:
        raise DataError(f"image folder {folder} is empty")
    if not images:
        shown = ", ".join(str(p.relative_to(folder)) for p in sorted(others)[:3])
        raise DataError(f"no images ({' '.join(EXTENSIONS)}) in {folder}; it holds "
                        f"{len(others)} other file(s), e.g. {shown}")
    return sorted(images)


def _labels(folder: Path, files: list[Path]) -> tuple:
    tops = [p.relative_to(folder).parts for p in files]
    nested = [len(t) > 1 for t in tops]
    if not any(nested):
        return None, []         # a flat folder: no classes
    if not all(nested):
        loose = sum(1 for t in nested if not t)
        raise DataError(f"labels come from sub-folders of {folder}, but {loose} image(s) lie "
                        f"directly in it; move them into a class folder or set dataset.labels=false")
    classes = sorted({t[0] for t in tops})
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[t[0]] for t in tops], dtype=torch.long), classes


def _decoded(folder, files, hw, pil_mode, fit, cache, cache_dir, workers) -> tuple:
    """(every image as a Stored view of uint8 [N, C, H, W], the undecodable files), from the
    cache when a whole one matches the files (their names, sizes and times) and settings."""
    listing = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(json.dumps([str(folder), hw, pil_mode, fit, listing]).encode()).hexdigest()
    path = cache_root(cache_dir) / f"image_folder-{folder.name}-{key[:20]}.npy"
    try:
        bad = decode.cached(path, files, folder, hw, pil_mode, fit, workers)
    except OSError as e:
        raise DataError(f"cannot write the decoded images to {path.parent} ({e.strerror or e}); "
                        f"set dataset.cache_dir to a writable folder") from None
    x = memory_mapped(path)
    if not cache:   # decoded through a file all the same; keep the images in memory, not the file
        x = x.clone()
        for p in (path, path.with_suffix(".json"), path.with_suffix(".lock")):
            p.unlink(missing_ok=True)
    return Stored(x), bad
