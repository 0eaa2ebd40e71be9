"""Where a file dataset's uint8 images live while a run trains (`dataset.storage`):

- `device`: one resident tensor on the training device (today's path, the fastest);
- `host`:   one tensor in host memory (pinned on CUDA); each batch is gathered on the host by a
            background thread while the previous one trains, and copied with non_blocking=True;
- `disk`:   the decoded cache file, memory-mapped; each batch's rows are read in sorted order by
            a background thread one or two batches ahead. What the process holds itself stays
            a few batches, whatever the size: the rest is the kernel's page cache;
- `auto`:   `device` when the images fit the memory budget of the training device, else `host`
            when they fit the host's, else `disk`; the choice and its reason are printed.

Before placement a file dataset's splits hold `Stored` views (rows of one source tensor, in
memory or memory-mapped); `place` turns them into resident tensors or keeps them as views with
a training device. A `Stored` answers what the code asks of `split.x` (len, shape, dtype, dim,
index_select, [...]): its `device` is where index tensors for it live (the CPU), and every read
returns a tensor on the training device. Batches and their pixels are the same in every mode."""
import math
import os
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from aexp.errors import ConfigError

MODES = ("auto", "device", "host", "disk")
AHEAD = 2               # batches a background thread prepares before they are asked for
SHARE = 0.5             # of the free device memory / available RAM, when no budget is given
GIB = 2 ** 30


class Stored:
    """Rows `rows` (all when None) of a uint8 `source` tensor (in memory or over a memory map),
    read per batch into tensors on `target`. `plan(batches)` names the index tensors the next
    reads will ask for, so they are gathered ahead on a background thread."""

    def __init__(self, source: torch.Tensor, rows: torch.Tensor | None = None, target="cpu"):
        self.source, self.rows, self.target = source, rows, torch.device(target)
        self._plan, self._ahead, self._pool = iter(()), deque(), None

    # -- what the code asks of split.x ------------------------------------------------------
    def __len__(self) -> int:
        return len(self.source) if self.rows is None else len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.source.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.source.dtype

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")      # index tensors for this split live on the host

    @property
    def nbytes(self) -> int:
        return len(self) * self.source[:1].numel() * self.source.element_size()

    def dim(self) -> int:
        return self.source.dim()

    def index_select(self, dim: int, idx: torch.Tensor) -> torch.Tensor:
        assert dim == 0
        idx = idx.cpu()
        if self._ahead and torch.equal(self._ahead[0][0], idx):
            block = self._ahead.popleft()[1].result()
            self._fill()
        else:
            block = self.gather(idx)
        return block.to(self.target, non_blocking=True)

    def __getitem__(self, key) -> torch.Tensor:
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        out = self.index_select(0, torch.arange(len(self))[rows].reshape(-1))
        return out[0][rest] if isinstance(rows, int) else out[(slice(None), *rest)]

    # -- reading ---------------------------------------------------------------------------
    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """The rows `idx` of this split as one host tensor, read in file order (locality),
        returned in the order asked; pinned when the target is a GPU."""
        rows = idx if self.rows is None else self.rows[idx]
        order = rows.argsort()
        block = self.source.index_select(0, rows[order])
        out = torch.empty(block.shape, dtype=block.dtype, pin_memory=self.target.type == "cuda")
        out[order] = block
        return out

    def read(self) -> torch.Tensor:
        """The whole split as one contiguous host tensor, in chunks of sorted rows."""
        if self.rows is None:
            return self.source.clone()
        return torch.cat([self.gather(c) for c in torch.arange(len(self)).split(8192)])

    def plan(self, batches) -> None:
        """The index tensors of the coming reads, in order (an iterable, consumed lazily);
        replaces any earlier plan. A read of anything else is served directly."""
        self._plan, self._ahead = iter(batches), deque()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="aexp-data")
        self._fill()

    def _fill(self) -> None:
        while len(self._ahead) < AHEAD:
            idx = next(self._plan, None)
            if idx is None:
                return
            idx = idx.cpu()
            self._ahead.append((idx, self._pool.submit(self.gather, idx)))

    def subset(self, idx: torch.Tensor) -> "Stored":
        """A view of the rows `idx` of this one (no data read)."""
        return Stored(self.source, idx if self.rows is None else self.rows[idx], self.target)

    def to(self, device) -> "Stored":
        return Stored(self.source, self.rows, device)


def memory_mapped(path) -> torch.Tensor:
    """A read-only tensor over a .npy file's data (nothing is read until used)."""
    return as_tensor(np.load(path, mmap_mode="r"))


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """`torch.from_numpy`, also for a read-only (memory-mapped) array, which is only ever read."""
    with warnings.catch_warnings():     # torch warns that the array is read-only
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def check_mode(mode: str, memory_budget=None) -> str:
    """`mode`, once it and the budget are valid settings (one line otherwise)."""
    if mode not in MODES:
        raise ConfigError(f"dataset.storage must be one of {', '.join(MODES)}, got '{mode}'")
    if memory_budget is not None and (isinstance(memory_budget, bool) or not
                                      isinstance(memory_budget, (int, float)) or memory_budget < 0):
        raise ConfigError(f"dataset.memory_budget must be a number of GiB >= 0 or null, "
                          f"got {memory_budget}")
    return mode


def subset(x, idx: torch.Tensor):
    """Rows `idx` of a split's images: a view for a `Stored`, a copy for a tensor."""
    return x.subset(idx) if isinstance(x, Stored) else x.index_select(0, idx)


def resident(x) -> torch.Tensor:
    """A split's images as one tensor in memory (reads a `Stored` whole)."""
    return x.read() if isinstance(x, Stored) else x


def choose(mode: str, nbytes: int, device: torch.device, budget_gib=None) -> tuple[str, str]:
    """(storage mode, why) for `nbytes` of images trained on `device`. `budget_gib` caps the
    memory the images may take on the device and on the host (None: half of what is free)."""
    if check_mode(mode) != "auto":
        return mode, "dataset.storage"
    host = _budget(available_ram(), budget_gib)
    size = f"{nbytes / GIB:.3g} GiB"
    if device.type == "cuda":
        dev = _budget(torch.cuda.mem_get_info(device)[0], budget_gib)
        if nbytes <= dev:
            return "device", f"auto: {size} fits {dev / GIB:.3g} GiB of {device}"
        if nbytes <= host:
            return "host", f"auto: {size} over {dev / GIB:.3g} GiB of {device}, fits {host / GIB:.3g} GiB of RAM"
    elif nbytes <= host:     # on the CPU the device is the host: resident or on disk
        return "device", f"auto: {size} fits {host / GIB:.3g} GiB of RAM"
    return "disk", f"auto: {size} over the {host / GIB:.3g} GiB memory budget"


def _budget(free: int, budget_gib) -> float:
    return SHARE * free if budget_gib is None else min(budget_gib * GIB, free)


def available_ram() -> int:
    """MemAvailable (what can be allocated without swapping), or the physical size."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def place(x, mode: str, device: torch.device):
    """A split's images in storage `mode` for training on `device`."""
    if not isinstance(x, Stored):
        return x.to(device)
    if mode == "device":
        return resident(x).to(device)
    if mode == "host":
        host = resident(x)
        return Stored(host.pin_memory() if device.type == "cuda" else host, None, device)
    return x.to(device)


def chunks(split, values: int = 1 << 24):
    """Index tensors covering `split` in order (on its index device), each of at most `values`
    values per sample times samples (at least one sample): passes over a whole split (the
    normalisation, the baselines) hold a bounded float copy whatever the image size."""
    per = max(1, values // max(1, math.prod(split.x.shape[1:])))
    for i in range(0, len(split), per):
        yield torch.arange(i, min(i + per, len(split)), device=split.x.device)
