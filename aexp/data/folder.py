"""Any folder of images as a dataset (faces, flowers, photos): found recursively, decoded once
into one uint8 tensor at a fixed size, cached on disk so the next run starts in seconds, and
split into train/val/test by fraction with a fixed seed."""
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from aexp.data.core import Data, Split, take
from aexp.errors import ConfigError, DataError
from aexp.io import atomic_write, cache_root

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MODES = {"rgb": "RGB", "gray": "L"}       # config name -> PIL mode
FITS = {
    # resize the shorter side to the target, then cut the centre (keeps the aspect ratio)
    "crop": lambda img, hw: ImageOps.fit(img, hw[::-1], Image.BICUBIC),
    # resize to exactly the target (distorts the aspect ratio)
    "stretch": lambda img, hw: img.resize(hw[::-1], Image.BICUBIC),
}


def image_folder(root: str, size=64, mode: str = "rgb", fit: str = "crop", labels: bool = True,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 cache: bool = True, cache_dir: str | None = None) -> Data:
    """Images under `root` (recursive; .jpg .jpeg .png .webp; hidden files skipped) at `size`
    (an int or [height, width]), RGB or grayscale. With `labels`, each image's class is the
    name of its top-level sub-folder (images directly in `root` mean an unlabelled folder)."""
    hw = _size(size)
    if mode not in MODES:
        raise ConfigError(f"dataset.mode must be one of {', '.join(MODES)}, got '{mode}'")
    if fit not in FITS:
        raise ConfigError(f"dataset.fit must be one of {', '.join(FITS)}, got '{fit}'")
    folder = Path(root).expanduser().resolve()
    files = find_images(folder)
    n = len(files)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    for key, frac, k, what in (("val_fraction", val_fraction, n_val, "validation"),
                               ("test_fraction", test_fraction, n_test, "test")):
        if not 0 < frac < 1 or k < 1:
            raise DataError(f"dataset.{key}={frac} of {n} images leaves the {what} split empty")
    if n - n_val - n_test < 1:
        raise DataError(f"val_fraction={val_fraction} and test_fraction={test_fraction} of {n} "
                        f"images leave the training split empty")

    x = _decoded(folder, files, hw, MODES[mode], fit, cache, cache_dir)
    y, classes = _labels(folder, files) if labels else (None, [])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    pick = lambda idx: Split(take(x, idx), take(y, idx))
    test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return Data(f"image_folder:{folder.name}", "image", pick(train), pick(val), pick(test),
                num_classes=len(classes) or None, classes=classes)


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


def _decoded(folder, files, hw, pil_mode, fit, cache, cache_dir) -> torch.Tensor:
    """All images as one uint8 tensor [N, C, H, W], from the cache when its key matches."""
    listing = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(json.dumps([str(folder), hw, pil_mode, fit, listing]).encode()).hexdigest()
    path = cache_root(cache_dir) / f"image_folder-{folder.name}-{key[:20]}.pt"
    if cache and path.is_file():
        try:
            x = torch.load(path, weights_only=True)["x"]
            if len(x) == len(files):
                return x
        except Exception:
            pass            # a damaged cache is rebuilt below
    x = decode_all(folder, files, hw, pil_mode, fit)
    if cache:
        try:
            atomic_write(path, lambda f: torch.save({"x": x, "files": [e[0] for e in listing]}, f))
        except OSError:
            pass            # an unwritable cache only costs the next run its head start
    return x


def decode_all(folder, files, hw, pil_mode, fit) -> torch.Tensor:
    def load(path):
        try:
            with Image.open(path) as img:
                return np.asarray(FITS[fit](img.convert(pil_mode), hw)), None
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            return None, f"{path.relative_to(folder)} ({type(e).__name__})"

    # PIL releases the GIL while decoding, so threads give a real speed-up.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(load, files))
    bad = [err for _, err in results if err]
    if bad:
        raise DataError(f"{len(bad)} unreadable or non-image file(s) among the images in {folder}: "
                        f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
    arrays = np.stack([a for a, _ in results])
    arrays = arrays[..., None] if arrays.ndim == 3 else arrays
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()

