"""Files a run folder is made of: atomic writes (temp file, fsync, rename), the per-epoch
`metrics.csv` (rewritten whole each epoch, so a kill never leaves half a row), the folder lock
(one run per folder at a time), the flattening of nested reports into dotted keys, and the cache
folder shared by classifiers and decoded images."""
import contextlib
import csv
import fcntl
import io
import os
import tempfile
from pathlib import Path

from aexp.errors import FolderBusy

# The marker a job writes last into its run folder: its presence means a finished, whole run.
FINISHED_MARKER = "COMPLETED.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; written files get the usual permissions.
FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: Path, write) -> None:
    """Call `write(fileobj)` on a temporary file beside `path`, fsync it, then rename it over
    `path`: a reader sees the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def flatten(d: dict, prefix: str = "", lists: bool = False, empty: bool = False) -> dict:
    """Nested report -> {'reconstruction.psnr': ..}, scalars only (lists are left out, or kept
    as they are with `lists=True`: a config's `model.hidden`; an empty dict is kept as a value
    with `empty=True`, so comparing two configs sees `{}` against a missing key)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and (v or not empty):
            out.update(flatten(v, key + ".", lists, empty))
        elif lists or not isinstance(v, list):
            out[key] = v
    return out


def cache_root(override=None) -> Path:
    """Where aexp keeps what it can rebuild (decoded image folders, evaluation classifiers):
    `override` when given, else $AEXP_CACHE, else ~/.cache/aexp."""
    return Path(override or os.environ.get("AEXP_CACHE") or Path.home() / ".cache" / "aexp").expanduser()


LOCK = ".lock"
_held: dict[str, int] = {}   # folders this process holds: re-entrant within one process


@contextlib.contextmanager
def folder_lock(folder: Path):
    """Hold an exclusive lock on a run folder (`.lock` in it, flock): a second process asking
    for it is refused in one line naming the holder's pid. The kernel releases the lock when its
    process ends in any way, SIGKILL included, so no stale lock outlives a run."""
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _held:
        yield
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise FolderBusy(f"cannot use the run folder {folder}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FolderBusy(f"{folder} is in use by another aexp run (pid {holder}); wait for it to "
                         f"end or choose another folder (hydra.run.dir)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd
    try:
        yield
    finally:
        del _held[key]
        os.close(fd)   # releases the lock
