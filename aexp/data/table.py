"""Tables of numbers as a dataset (`dataset=table`): each row a float vector [D], with an optional
label column, read from a CSV (a header row naming the columns), a `.npy` array [N, D] or, when
pyarrow is installed, a Parquet file. Vectors flow through the dense models (mlp, vae), the
losses, frames, evaluation and the explorer like the colour data does, shown as grey strips.

Rows are shuffled with the seed and carved into test, validation and training splits. Columns
are scaled with statistics of the training split only: `minmax` to [0, 1] (what a sigmoid output
and a BCE term need; validation and test rows are clipped to the training range), `standard` to
zero mean and unit variance (use model.output_activation=none), or `none`."""
import csv
from pathlib import Path

import numpy as np
import torch

from aexp.data.core import Data, Split
from aexp.errors import DataError

SCALES = ("minmax", "standard", "none")


def _read_csv(path: Path, label):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise DataError(f"{path}: a CSV needs a header row and at least one row of numbers")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    if label is not None and label not in header:
        raise DataError(f"{path}: no column {label!r} for dataset.label (columns: {', '.join(header)})")
    keep = [i for i, h in enumerate(header) if h != label]
    try:
        x = np.array([[float(r[i]) for i in keep] for r in body], dtype=np.float64)
    except (ValueError, IndexError) as e:
        raise DataError(f"{path}: every column but the label must hold numbers, in every row "
                        f"({' '.join(str(e).split())[:120]})") from None
    y = [r[header.index(label)].strip() for r in body] if label is not None else None
    return x, y, [header[i] for i in keep]


def _read_array(path: Path, label):
    if path.suffix == ".npy":
        a = np.load(path, allow_pickle=False)
        names = [str(i) for i in range(a.shape[1])] if a.ndim == 2 else []
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or save "
                            f"the table as .csv or .npy") from None
        t = pq.read_table(path)
        names = list(t.column_names)
        label = names.index(label) if isinstance(label, str) and label in names else label
        if isinstance(label, str):
            raise DataError(f"{path}: no column {label!r} for dataset.label (columns: {', '.join(names)})")
        a = np.stack([t.column(n).to_numpy(zero_copy_only=False) for n in names], 1) if names else np.empty((0, 0))
    if a.ndim != 2:
        raise DataError(f"{path}: needs a 2-D table [rows, columns], got shape {a.shape}")
    if label is None:
        return a.astype(np.float64), None, names
    if not isinstance(label, int) or not -a.shape[1] <= label < a.shape[1]:
        raise DataError(f"{path}: dataset.label must name a column index below {a.shape[1]} (or a "
                        f"Parquet column name), got {label!r}")
    keep = [i for i in range(a.shape[1]) if i != label % a.shape[1]]
    return a[:, keep].astype(np.float64), [str(v) for v in a[:, label].tolist()], [names[i] for i in keep]


def _classes(y):
    """Labels as int64 class indices; numbers sort as numbers, other names alphabetically."""
    try:
        names = sorted(set(y), key=float)
    except ValueError:
        names = sorted(set(y))
    index = {n: i for i, n in enumerate(names)}
    return torch.tensor([index[v] for v in y], dtype=torch.long), names


def table(path: str, label=None, scale: str = "minmax", val_fraction: float = 0.1,
          test_fraction: float = 0.1, seed: int = 0) -> Data:
    """The rows of `path` as float vectors, `label` (a CSV column name, a .npy column index) as
    classes; see the module docstring."""
    if path is None or str(path) in ("", "???"):
        raise DataError("dataset=table needs a file: dataset.path=/path/to/table.csv (.npy, .parquet)")
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise DataError(f"dataset.path: no such file {p}")
    if scale not in SCALES:
        raise DataError(f"dataset.scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"dataset.val_fraction and test_fraction must be in (0, 1) with a sum below 1, "
                        f"got {val_fraction} and {test_fraction}")
    reader = _read_csv if p.suffix.lower() in (".csv", ".tsv", ".txt") else _read_array
    if reader is _read_array and p.suffix.lower() not in (".npy", ".parquet", ".pq"):
        raise DataError(f"dataset.path: {p.name} is not a .csv, .npy or .parquet file")
    x, y, _ = reader(p, label)
    if x.shape[1] == 0:
        raise DataError(f"{p}: no feature columns (only the label?)")
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        raise DataError(f"{p}: row {bad[0][0] + 1}, feature column {bad[0][1] + 1} is not a finite number")
    n = len(x)
    n_test, n_val = max(1, round(n * test_fraction)), max(1, round(n * val_fraction))
    if n - n_test - n_val < 1:
        raise DataError(f"{p}: {n} rows are too few for a training, validation and test split")
    order = np.random.default_rng(seed).permutation(n)
    test_idx, val_idx, train_idx = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    fit = x[train_idx]
    if scale == "minmax":
        low, span = fit.min(0), fit.max(0) - fit.min(0)
        x = np.clip((x - low) / np.where(span > 0, span, 1), 0, 1)
    elif scale == "standard":
        std = fit.std(0)
        x = (x - fit.mean(0)) / np.where(std > 0, std, 1)
    x = torch.from_numpy(x.astype(np.float32))
    labels, classes = _classes(y) if y is not None else (None, [])
    split = lambda idx: Split(x[idx], None if labels is None else labels[idx])
    return Data(p.stem, "vectors", split(train_idx), split(val_idx), split(test_idx),
                num_classes=len(classes) or None, classes=classes)
