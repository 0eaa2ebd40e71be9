"""Decoding an image folder once, in parallel, into a cache file every later run maps or reads:
a .npy of uint8 [N, C, H, W] (memory-mappable, so `storage=disk` reads rows straight from it)
beside a small .json naming the files that could not be decoded.

A process pool (`dataset.workers`, all usable cores by default) decodes chunks of files, each
worker writing its rows straight into the memory-mapped temporary file: no process ever holds
the whole set. The temporary file is renamed over the cache name only once every row is
written and flushed, so a run killed mid-decode leaves no cache that a later run accepts (the
next run decodes again; stale temporaries of dead runs are removed). Runs decoding the same
folder at once (a parallel sweep) take turns on a lock: the second finds the first's cache."""
import fcntl
import json
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from aexp.errors import DataError
from aexp.io import FILE_MODE

FITS = {
    # resize the shorter side to the target, then cut the centre (keeps the aspect ratio)
    "crop": lambda img, hw: ImageOps.fit(img, hw[::-1], Image.BICUBIC),
    # resize to exactly the target (distorts the aspect ratio)
    "stretch": lambda img, hw: img.resize(hw[::-1], Image.BICUBIC),
}
BAD = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)
CHUNK = 64              # files per task: small enough for an even spread and a live progress bar
SHOWN = 2000            # folders at least this large show a progress bar


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity: taskset, cgroups, SLURM's allocation);
    also what `train.threads: auto` shares out (aexp.run.threads)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # macOS has no affinity
        return os.cpu_count() or 1


def cached(path: Path, files: list[Path], folder: Path, hw, pil_mode: str, fit: str,
           workers: int | None) -> list:
    """Make sure `path` holds the .npy cache of these files, decoding them now unless a whole
    cache is there; returns [(index, "relative/path (error)"), ...] for the files that could
    not be decoded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)      # one decode per cache at a time
        bad = accepted(path, len(files), hw)
        if bad is None:
            _remove_stale(path)
            bad = decode(path, files, folder, hw, pil_mode, fit, workers)
    return bad


def accepted(path: Path, n: int, hw) -> list | None:
    """The cache's list of undecodable files when the cache is whole and of the expected shape;
    None when it must be (re)built."""
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        shape = np.load(path, mmap_mode="r").shape
        if info["n"] != n or shape[0] != n or tuple(shape[2:]) != tuple(hw):
            return None
        return [tuple(b) for b in info["bad"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None     # unreadable or torn: rebuilt


def decode(path: Path, files, folder: Path, hw, pil_mode: str, fit: str, workers) -> list:
    """Decode `files` into `path` (see the module's docstring); returns the undecodable ones."""
    channels = 3 if pil_mode == "RGB" else 1
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(files), channels, *hw))
        del out                                # workers open it themselves
        chunks = [(tmp, [str(f) for f in files[i:i + CHUNK]], i, hw, pil_mode, fit, str(folder))
                  for i in range(0, len(files), CHUNK)]
        n = min(workers or usable_cores(), len(chunks))
        bad = _run(chunks, n, len(files))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        meta = json.dumps({"n": len(files), "bad": bad}).encode()
        meta_tmp = path.with_name(f"{path.name}.{os.getpid()}.json.tmp")
        meta_tmp.write_bytes(meta)
        os.replace(meta_tmp, path.with_suffix(".json"))
        os.replace(tmp, path)                  # the commit point: now the cache is whole
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return bad


def _run(chunks, workers: int, total: int) -> list:
    """Decode every chunk (in this process when `workers` is 1), with a progress bar."""
    progress = Progress(TextColumn("decoding images"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=Console(stderr=True), transient=True,
                        disable=total < SHOWN)
    task = progress.add_task("decode", total=total)
    bad = []
    if workers <= 1:
        with progress:
            for chunk in chunks:
                bad += _decode_chunk(*chunk)
                progress.advance(task, len(chunk[1]))
        return sorted(bad)
    # Forked workers, as torch's DataLoader starts its own on Linux: they start in milliseconds
    # (a spawned one would import torch first) and only run PIL and numpy. The pool forks them
    # all at the first submit, before its own thread and the progress bar's start.
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending = {pool.submit(_decode_chunk, *c): len(c[1]) for c in chunks}
        with progress:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        bad += future.result()
                    except BrokenProcessPool:
                        raise DataError(f"a decoding worker died (out of memory?); try fewer "
                                        f"processes with dataset.workers (was {workers})") from None
                    progress.advance(task, pending.pop(future))
    return sorted(bad)


def _decode_chunk(tmp, files, start: int, hw, pil_mode: str, fit: str, folder: str) -> list:
    """Decode `files` into rows start.. of the memory-mapped `tmp` (in a worker)."""
    out = np.load(tmp, mmap_mode="r+")
    bad = []
    for i, name in enumerate(files):
        try:
            with Image.open(name) as img:
                a = np.asarray(FITS[fit](img.convert(pil_mode), hw))
            out[start + i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        except BAD as e:
            bad.append((start + i, f"{os.path.relpath(name, folder)} ({type(e).__name__})"))
    out.flush()
    return bad


def _remove_stale(path: Path) -> None:
    """Delete temporaries of this cache left by runs that died mid-decode."""
    for tmp in path.parent.glob(f"{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 1:].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def refuse_bad(bad: list, folder: Path) -> None:
    """One line naming the undecodable files (dataset.skip_bad=false)."""
    if bad:
        shown = ", ".join(b for _, b in bad[:3])
        raise DataError(f"{len(bad)} unreadable image file(s) in {folder}: {shown}"
                        f"{' ...' if len(bad) > 3 else ''}; remove them or set dataset.skip_bad=true "
                        f"to train without them")
