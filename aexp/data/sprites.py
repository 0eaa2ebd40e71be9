"""A dSprites-like dataset generated here: the factor grid of DeepMind's dSprites (3 shapes x 6
scales x 40 orientations x 32 x 32 positions = 737,280 binary 64x64 images) drawn by our own
rasteriser, not the DeepMind file (which this machine cannot download, and whose exact pixels we
do not claim to reproduce). The factors are the labels: every split carries its factor matrix.

Each (shape, scale, orientation) sprite is drawn once on a 32x32 canvas, supersampled 8x8 per
pixel (anti-aliasing: the share of a pixel the shape covers) and thresholded at half coverage, so
the images are binary like the original. Positions are whole-pixel shifts of that canvas: a
position step moves the shape by exactly one pixel (centre 16..47 px on both axes), so the
images of one sprite differ only by where it sits. Everything is numpy over arrays (no loop over
images); the result depends on nothing but the code, and its sha256 is printed, kept in the
cache's metadata and shown in the dataset's name and in eval.json.

The images are generated once into the dataset cache (`cache_root`, keyed by the generator's
version and the chosen factor values) as a memory-mappable .npy, so `dataset.storage` serves
them like any file dataset (`disk` reads rows per batch)."""
import fcntl
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from aexp.data.core import Data, Split, carve
from aexp.data.storage import Stored, check_mode, memory_mapped
from aexp.errors import ConfigError
from aexp.io import FILE_MODE, cache_root

VERSION = 1                 # bump when a pixel could change: the cache key and the pinned hash follow
SIZE, CANVAS, SUPER = 64, 32, 8
BASE = 10.0                 # pixels: the shapes' unit length at scale 1 (square half-side)
FACTORS = {                 # name -> the grid's values (dSprites' own)
    "shape": ["square", "ellipse", "heart"],
    "scale": [round(float(s), 6) for s in np.linspace(0.5, 1.0, 6)],
    "orientation": [2 * math.pi * i / 40 for i in range(40)],
    "pos_x": [round(float(p), 6) for p in np.linspace(0, 1, 32)],
    "pos_y": [round(float(p), 6) for p in np.linspace(0, 1, 32)],
}
NAMES = list(FACTORS)
SIZES = [len(v) for v in FACTORS.values()]
CHUNK = 4096                # images placed per step (bounded memory whatever the grid)


def dsprites(subset: dict | None = None, val_size: float = 0.05, test_size: float = 0.1,
             seed: int = 0, storage: str = "auto", memory_budget: float | None = None,
             cache_dir: str | None = None, colors: int = 0) -> Data:
    """The dSprites-like grid, or the part of it `subset` picks: per factor an int k (every k-th
    value), a list of value indices, or null (all). `val_size` / `test_size`: a share of the
    images (below 1) or a count, carved with the fixed `seed`. `colors` > 0: RGB images, the
    shape painted in one of that many hues on black, a sixth factor (`colour`, the first)."""
    check_mode(storage, memory_budget)
    if isinstance(colors, bool) or not isinstance(colors, int) or not 0 <= colors <= 64:
        raise ConfigError(f"dataset.colors must be 0 (binary, as dSprites) or 1..64 hues, got {colors!r}")
    factors, names, sizes = grid(choose(subset)), NAMES, SIZES
    if colors:      # the colour varies slowest
        factors = np.c_[np.repeat(np.arange(colors), len(factors)), np.tile(factors, (colors, 1))]
        names, sizes = ["colour", *NAMES], [colors, *SIZES]
    path, digest = cached(factors, cache_dir, colors)
    whole = Split(Stored(memory_mapped(path)), factors=torch.from_numpy(factors))
    n = len(factors)
    rest, test = carve(whole, _count(test_size, n, "test_size"), seed, "test")
    fit, val = carve(rest, _count(val_size, n, "val_size"), seed)
    return Data(f"dsprites-like{'-colour' if colors else ''} sha256:{digest[:12]}", "image", fit,
                val, test, storage=storage, memory_budget=memory_budget, factor_names=names,
                factor_sizes=sizes, content_hash=digest)


def choose(subset: dict | None) -> list[np.ndarray]:
    """The value indices each factor keeps (one line for anything unusable)."""
    subset = dict(subset or {})
    unknown = set(subset) - set(NAMES)
    if unknown:
        raise ConfigError(f"dataset.subset: unknown factor(s) {', '.join(sorted(unknown))}; "
                          f"the factors are {', '.join(NAMES)}")
    keep = []
    for name, size in zip(NAMES, SIZES):
        pick = subset.get(name)
        if pick is None:
            idx = np.arange(size)
        elif isinstance(pick, int) and not isinstance(pick, bool) and pick >= 1:
            idx = np.arange(0, size, pick)
        elif not isinstance(pick, (str, bool, int, float)) and len(list(pick)) > 0 and \
                all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < size for i in pick):
            idx = np.unique(np.asarray(list(pick), dtype=np.int64))
        else:
            raise ConfigError(f"dataset.subset.{name} must be null, a step >= 1 or a list of "
                              f"indices in 0..{size - 1}, got {pick!r}")
        keep.append(idx)
    return keep


def grid(keep: list[np.ndarray]) -> np.ndarray:
    """Every combination of the kept values, int64 [N, 5] of value indices, in dSprites' order
    (the last factor, pos_y, varies fastest)."""
    mesh = np.meshgrid(*keep, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], 1).astype(np.int64)


def sprites(shape: int, scales, angles) -> np.ndarray:
    """uint8 0/255 [len(scales), len(angles), CANVAS, CANVAS]: the shape centred on the canvas,
    each pixel on when the shape covers at least half of its SUPER x SUPER subpixels.
    Only +, -, * and comparisons touch the pixels (no vectorised sin or pow, whose last bit may
    differ between CPUs' SIMD paths); the angles' cosines come from Python's libm, rounded."""
    c = (np.arange(CANVAS * SUPER, dtype=np.float64) + 0.5) / SUPER - CANVAS / 2
    y, x = np.meshgrid(c, c, indexing="ij")                       # y grows downwards
    cos = np.array([round(math.cos(a), 12) for a in angles])[:, None, None]
    sin = np.array([round(math.sin(a), 12) for a in angles])[:, None, None]
    out = []
    for scale in scales:                                          # one scale at a time: bounded memory
        u = (cos * x + sin * y) * (1 / (scale * BASE))            # the point in the shape's frame
        v = (cos * y - sin * x) * (1 / (scale * BASE))
        if shape == 0:                                            # square, side 2 units
            inside = np.maximum(np.abs(u), np.abs(v)) <= 1.0
        elif shape == 1:                                          # ellipse, 2:1
            inside = u * u * (1 / 1.69) + v * v * (1 / 0.4225) <= 1.0
        else:                                                     # heart: (x²+y²-1)³ <= x²y³, point down
            hy = 0.12 - v
            r = u * u + hy * hy - 1
            inside = r * r * r - u * u * hy * hy * hy <= 0
        cover = inside.reshape(len(angles), CANVAS, SUPER, CANVAS, SUPER).sum((2, 4))
        out.append(np.where(2 * cover >= SUPER * SUPER, 255, 0).astype(np.uint8))
    return np.stack(out)


def palette(n: int) -> np.ndarray:
    """uint8 [n, 3]: n hues evenly around the circle at full saturation and value (HSV's closed
    form, arithmetic only)."""
    h = np.arange(n) / n
    k = [(m + h * 6) % 6 for m in (5, 3, 1)]
    return np.rint(np.stack([1 - np.clip(np.minimum(c, 4 - c), 0, 1) for c in k], 1) * 255).astype(np.uint8)


def render(factors: np.ndarray, out: np.ndarray | None = None, colors: int = 0) -> np.ndarray:
    """The images of `factors` (rows of value indices), uint8 [N, 1, 64, 64] (or [N, 3, 64, 64]
    with `colors`, the rows then starting with the colour), into `out` when given (e.g. a memory
    map); sprites are drawn once each, placed CHUNK images at a time."""
    n = len(factors)
    colour, factors = (factors[:, 0], factors[:, 1:]) if colors else (None, factors)
    out = np.zeros((n, 3 if colors else 1, SIZE, SIZE), np.uint8) if out is None else out
    scales, angles = (np.unique(factors[:, k]) for k in (1, 2))
    bank = np.stack([sprites(s, np.take(FACTORS["scale"], scales),
                             np.take(FACTORS["orientation"], angles)) for s in range(3)])
    where = lambda col, vals: np.searchsorted(vals, col)          # value index -> bank index
    ar = np.arange(CANVAS)
    for i in range(0, n, CHUNK):
        f = factors[i:i + CHUNK]
        tiles = bank[f[:, 0], where(f[:, 1], scales), where(f[:, 2], angles)]
        block = np.zeros((len(f), SIZE, SIZE), np.uint8)
        rows = (f[:, 4][:, None, None] + ar[None, :, None])       # pos_y: canvas top row
        cols = (f[:, 3][:, None, None] + ar[None, None, :])       # pos_x: canvas left column
        block[np.arange(len(f))[:, None, None], rows, cols] = tiles
        if colors:      # the shape's pixels take its hue, the background stays black
            hue = palette(colors)[colour[i:i + len(f)]][:, :, None, None]
            out[i:i + len(f)] = np.where(block[:, None] > 0, hue, 0)
        else:
            out[i:i + len(f), 0] = block
    return out


def content_hash(images: np.ndarray) -> str:
    """sha256 of the uint8 array's bytes (C order)."""
    h = hashlib.sha256()
    for i in range(0, len(images), CHUNK):
        h.update(np.ascontiguousarray(images[i:i + CHUNK]).tobytes())
    return h.hexdigest()


def cached(factors: np.ndarray, cache_dir=None, colors: int = 0) -> tuple[Path, str]:
    """(the .npy holding the images of `factors`, their sha256), generating it unless a whole
    cache is there. The file is written under a temporary name and renamed once complete (a run
    killed mid-way leaves nothing a later run accepts); concurrent runs take turns on a lock."""
    key = hashlib.sha256(f"v{VERSION}c{colors}".encode() + factors.tobytes()).hexdigest()[:20]
    path = cache_root(cache_dir) / f"dsprites-{key}.npy"
    meta = path.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            info = json.loads(meta.read_text())
            if path.is_file() and np.load(path, mmap_mode="r").shape[0] == len(factors):
                return path, info["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            pass                                            # missing or torn: generated again
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                            shape=(len(factors), 3 if colors else 1, SIZE, SIZE))
            render(factors, out, colors)
            out.flush()
            digest = content_hash(out)
            del out
            os.chmod(tmp, FILE_MODE)
            meta.write_text(json.dumps({"n": len(factors), "version": VERSION, "sha256": digest}))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    print(f"dsprites-like: generated {len(factors):,} images into {path} (sha256 {digest})",
          file=sys.stderr, flush=True)
    return path, digest


def _count(size, n: int, name: str) -> int:
    """A split size: a share of `n` (0 < size < 1) or a count."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0:
        raise ConfigError(f"dataset.{name} must be a share in (0, 1) or a count >= 1, got {size!r}")
    return max(1, round(size * n)) if size < 1 else int(size)
