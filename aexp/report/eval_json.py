"""eval.json of a run folder as it is read back: `aexp eval` rewrites the file and `aexp sample`
updates its `samplers` section, and both keep the sampler scores drawn by the same checkpoint's
decoder that they did not recompute. The file may come from someone else (a run folder is
untrusted input): one that is not a JSON object is set aside with a note, never an error."""
import json
from pathlib import Path

from aexp.io import atomic_write

SHARED = ("images", "k", "reference", "baseline")   # the section's keys that are not a sampler


def previous(path: Path) -> tuple[dict | None, str | None]:
    """(the report in an existing eval.json, or None; a note when it could not be read). The file
    is part of a run folder, which may come from someone else: anything but a JSON object is
    set aside with a note, never an error."""
    if not path.is_file():
        return None, None
    try:
        report = json.loads(path.read_text())
        why = None if isinstance(report, dict) else "not a JSON object"
    except (OSError, ValueError, RecursionError) as e:   # unreadable, not UTF-8, not JSON, too deep
        why = (str(e).splitlines() or [type(e).__name__])[0][:120]
    if why is None:
        return report, None
    return None, f"the previous {path.name} could not be read ({why}): its sampler scores were not kept"


def plain(value, depth: int) -> bool:
    """A number, string, list of those, or a dict of such nested at most `depth` deep: what an
    entry of the section holds, and all a kept one may hold (the table prints it)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return all(v is None or isinstance(v, (bool, int, float, str)) for v in value)
    return isinstance(value, dict) and depth > 0 and all(isinstance(k, str) and plain(v, depth - 1)
                                                         for k, v in value.items())


def kept(old: dict | None, epoch, fresh: dict) -> tuple[dict, str | None]:
    """(the `samplers` entries of an earlier report that `fresh` does not recompute and that were
    drawn by this checkpoint's decoder (their `run_epoch` is `epoch`); a note naming those left
    out). The section's shared keys (its floor and ceiling) come along only when `fresh` has none."""
    section = (old or {}).get("samplers")
    if not isinstance(section, dict):
        return {}, None
    entries = {k: v for k, v in section.items() if k not in SHARED and k not in fresh
               and isinstance(v, dict) and "skipped" not in v}
    same = {k: v for k, v in entries.items() if epoch is not None and v.get("run_epoch") == epoch
            and plain(v, 1)}
    gone = [" ".join(name.split())[:40] for name in sorted(set(entries) - set(same))[:10]]   # one line
    note = (f"sampler scores left out: {', '.join(gone)} (drawn by the decoder of another checkpoint, "
            "or not readable; aexp sample RUN --sampler NAME draws them anew)") if gone else None
    shared = {k: section[k] for k in SHARED if k in section and plain(section[k], 2)} if same and not fresh else {}
    return {**shared, **same}, note


def merge_into_eval_json(run_dir: Path, part: dict, epoch) -> tuple[Path, str | None]:
    """eval.json with its `samplers` section updated by `part` (the other samplers drawn by this
    checkpoint's decoder kept), and a note on what was left out."""
    path = run_dir / "eval.json"
    report, note = previous(path)
    others, left_out = kept(report, epoch, part)
    report = report or {"run_dir": str(run_dir)}
    report["samplers"] = {**others, **part}
    atomic_write(path, lambda f: f.write(json.dumps(report, indent=2).encode()))
    return path, note or left_out
