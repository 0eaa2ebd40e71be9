"""Metric functions and the per-epoch `metrics.csv` (rewritten atomically each epoch, so a kill
never leaves half a row)."""
import csv
import io
from pathlib import Path

from aexp.checkpoint import atomic_write


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write all rows; columns are the union of keys in first-seen order."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def read_csv(path: Path) -> list[dict]:
    """Rows of a metrics.csv with numbers parsed (empty cells become None)."""
    with open(path, newline="") as f:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _num(v):
    if v in (None, ""):
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
