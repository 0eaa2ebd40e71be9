"""The dataset contract: `Data` holds three splits (uint8 images or float vectors) and turns
samples into (input, target) batches through its task and corruption. Small datasets are
decoded once into one tensor, moved to the training device, and batched by index: no
DataLoader and no per-sample Python in the training loop. A file dataset bigger than memory
keeps its images in host memory or on disk instead (`storage`, aexp.data.storage), read per
batch behind the same `batch` call."""
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from aexp.data.color import ENCODINGS
from aexp.data.corruption import Corruption, NoCorruption
from aexp.data.storage import Stored, choose, place, subset
from aexp.data.tasks import Reconstruct, Task
from aexp.errors import ConfigError, DataError


@dataclass
class Split:
    x: torch.Tensor | Stored        # uint8 [N, C, H, W] for images, float [N, D] for vectors;
                                    # a Stored view for images read per batch (data.storage)
    y: torch.Tensor | None = None   # int64 class labels [N], when the data has them
    factors: torch.Tensor | None = None  # int64 [N, K] generative factors (value indices), when
                                    # the data was made from known factors (dataset=dsprites)

    def __len__(self):
        return len(self.x)

    def labels(self, idx):
        """The class labels of the samples `idx` (an index tensor or array; on the labels'
        device), or None for unlabelled data: what a conditional model is given with them."""
        return None if self.y is None else self.y[torch.as_tensor(idx, device=self.y.device)]

    def plan(self, batches) -> None:
        """Say which index tensors the coming batches will ask for (an iterable), so storage
        that reads per batch prepares them ahead; resident tensors need nothing."""
        if isinstance(self.x, Stored):
            self.x.plan(batches)


@dataclass
class Data:
    """A dataset ready for training: three splits, the facts models are built from, and the
    task (how samples become input and target) and input corruption of the run."""
    name: str
    kind: str                       # "colors" (points coloured by their own value) or "image"
    train: Split
    val: Split
    test: Split
    num_classes: int | None = None
    classes: list = field(default_factory=list)
    encoding: str = "rgb"           # how colours are shown to the model: rgb | hsv | lab
    task: Task = field(default_factory=Reconstruct)   # task.name: "reconstruct" | "colorize"
    corruption: Corruption = field(default_factory=NoCorruption)
    redraw: Callable | None = None  # redraw(generator) -> a fresh training split's x, or None
    storage: str = "device"         # for Stored splits: auto | device | host | disk (data.storage)
    memory_budget: float | None = None  # GiB the images may take in memory (None: half the free)
    placed: str = ""                # where `to` put the images, and why (shown in the banner)
    skipped: int = 0                # undecodable files left out (dataset.skip_bad)
    factor_names: list = field(default_factory=list)  # names of the columns of Split.factors
    factor_sizes: list = field(default_factory=list)  # values each factor has in the full grid
    content_hash: str = ""          # sha256 of a generated dataset's images (its provenance)

    @property
    def in_shape(self) -> tuple:
        return tuple(self.task.shapes(tuple(self.train.x.shape[1:]))[0])

    @property
    def out_shape(self) -> tuple:
        return tuple(self.task.shapes(tuple(self.train.x.shape[1:]))[1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return ENCODINGS[self.encoding][0](x)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return ENCODINGS[self.encoding][1](x)

    def prepare(self, task: Task | None = None, corruption: Corruption | None = None) -> "Data":
        """Attach the run's task and corruption, check they fit, fit the input normalisation."""
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"dataset.encoding must be one of {', '.join(ENCODINGS)}, "
                              f"got '{self.encoding}'")
        out = replace(self, task=task or Reconstruct(), corruption=corruption or NoCorruption())
        out.task.setup(out)
        out.corruption.check(out.in_shape)
        return out

    def batch(self, split: Split, idx=None, train: bool = False) -> tuple:
        """(model input, target) as floats for the samples `idx` of `split` (all when None).
        Training batches (`train=True`) get the task's random flips (input and target alike)
        and the input corruption; evaluation batches get neither."""
        x = self.encode(as_float(take(split.x, idx)))
        if train:
            x = self.task.augment(x)
        inp, target = self.task.pair(x)
        if train:
            inp = self.corruption(inp)
        return self.task.normalize(inp), target

    def to_rgb(self, x: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        """What a person (or the classifier) looks at: RGB pictures in [0, 1] ([N, 3, H, W], or
        [N, 3] for colours) from a model input `x` as `batch` returns it and a target or
        prediction `y`: the reconstruction for "reconstruct" (grey images repeated to 3
        channels), L of `x` joined with the predicted a,b for "colorize". `x` is None for
        decoded codes, which have no input: a colourisation's a,b are then shown over mid-grey."""
        shown = (self.task.unnormalize(x) if x is not None
                 else torch.full((len(y), *self.in_shape), 0.5, device=y.device))
        return self.task.rgb(shown, y, self.decode).clamp(0, 1)

    def new_epoch(self, gen: torch.Generator) -> None:
        """Called once at the start of every training epoch: datasets drawn fresh each epoch
        (colours with `fresh: true`) redraw the training split from the data-order generator
        `gen`, so a resumed run draws the same samples."""
        if self.redraw is not None:
            self.train = Split(self.redraw(gen).to(self.train.x.device))

    def to(self, device) -> "Data":
        """The data on the training `device`: tensors moved there; Stored images placed in the
        storage mode `storage` resolves to (aexp.data.storage)."""
        device = torch.device(device)
        splits = (self.train, self.val, self.test)
        placed = self.placed
        mode = "device"
        if any(isinstance(s.x, Stored) for s in splits):
            nbytes = sum(s.x.nbytes for s in splits if isinstance(s.x, Stored))
            mode, why = choose(self.storage, nbytes, device, self.memory_budget)
            placed = f"{mode} ({why})"
        move = lambda s: Split(place(s.x, mode, device), None if s.y is None else s.y.to(device),
                               s.factors)     # factors stay on the CPU: only evaluation reads them
        self.task.to(device)
        return replace(self, train=move(self.train), val=move(self.val), test=move(self.test),
                       placed=placed)


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Model input from stored data: uint8 images -> float in [0, 1]; floats pass through."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def carve(split: Split, size: int, seed: int, what: str = "validation") -> tuple[Split, Split]:
    """Split off `size` samples (chosen by a fixed seed) as validation; return (rest, val)."""
    n = len(split)
    if not 0 < size < n:
        raise DataError(f"{what} size {size} leaves an empty split of {n} samples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    pick = lambda idx: Split(subset(split.x, idx), take(split.y, idx), take(split.factors, idx))
    return pick(perm[size:]), pick(perm[:size])


def take(t: torch.Tensor | None, idx) -> torch.Tensor | None:
    """`t[idx]`; for an index tensor through `index_select`, about 3x faster than `t[idx]`
    on large uint8 image tensors."""
    if t is None or idx is None:
        return t[:] if isinstance(t, Stored) else t     # (a Stored split read whole)
    return t.index_select(0, idx) if isinstance(idx, torch.Tensor) and idx.dim() == 1 else t[idx]
