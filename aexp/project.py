"""The open user project: a folder holding an `aexp.yaml`, where a researcher keeps their own
models, datasets and losses (Python) and the YAML options that name them, without forking aexp.

    # aexp.yaml
    trust: [my_project]   # module/package prefixes whose targets this project's runs may name
    conf: conf            # config groups joined to aexp's own (conf/model/, conf/dataset/, ...)
    python: [src]         # folders put on sys.path, so `my_project` imports

The project is the one named by `--project DIR` (the CLI sets AEXP_PROJECT for the call), else
$AEXP_PROJECT, else the nearest folder at or above the current one holding an aexp.yaml; none is
fine (aexp alone). Opening it puts its `python` folders on sys.path and its `conf` on Hydra's
search path (aexp's own options come first); aexp.trust reads its `trust` list, so run folders
opened from the project may name its classes without --trust. The list may name only packages
inside the project's python folders: a folder someone sent with an aexp.yaml trusting `os` or
`torch` cannot widen what its run folders may call. Only plain YAML is read here (no
torch, no Hydra): every command may call it."""
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from aexp.errors import ConfigError

ENV = "AEXP_PROJECT"
FILE = "aexp.yaml"
FIELDS = ("name", "trust", "conf", "python")
# a dotted module path: a prefix such as "os" is the user's own choice, "" or "*" is no prefix
PREFIX = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class Project:
    root: Path                 # the folder holding aexp.yaml
    name: str
    trust: tuple = ()          # module/package prefixes its runs may name
    conf: Path | None = None   # its config groups, when the folder exists
    python: tuple = ()         # folders put on sys.path

    def trusts(self, target: str) -> bool:
        """Whether `target` (a dotted name) lies under one of the declared prefixes, and its
        package, when already imported, is the project's own copy (not one of the same name)."""
        top = sys.modules.get(target.split(".")[0])
        where = getattr(top, "__file__", None) if top else None
        if top is not None and not (where and any(Path(where).resolve().is_relative_to(f) for f in self.python)):
            return False
        return any(target == p or target.startswith(p + ".") for p in self.trust)

    def searchpath_override(self) -> list[str]:
        """The Hydra override that joins the project's conf groups to aexp's (none without conf)."""
        return [f"hydra.searchpath=[file://{self.conf}]"] if self.conf else []


def find(start: Path | None = None) -> Path | None:
    """The folder of the open project's aexp.yaml: $AEXP_PROJECT (must hold one), else the nearest
    folder at or above `start` (the current folder) that does; None when there is none."""
    named = os.environ.get(ENV)
    if named:
        root = Path(named).expanduser().resolve()
        if not (root / FILE).is_file():
            raise ConfigError(f"{root} holds no {FILE}: not an aexp project (--project / {ENV}; "
                              f"aexp init DIR makes one)")
        return root
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / FILE).is_file():
            return folder
    return None


def read(root: Path) -> Project:
    """Project settings from ROOT/aexp.yaml; a malformed file is refused in one line."""
    import yaml

    path = root / FILE
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read it: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must hold a mapping of {', '.join(FIELDS)}")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown field {', '.join(map(str, unknown))} (known: {', '.join(FIELDS)})")
    listed = lambda key, default: [raw.get(key, default)] if isinstance(raw.get(key, default), str) \
        else raw.get(key, default)
    trust, python = listed("trust", []), listed("python", [])
    for key, value in (("trust", trust), ("python", python)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: {key} must be a list of strings, got {value!r}")
    bad = [p for p in trust if not PREFIX.match(p)]
    if bad:
        raise ConfigError(f"{path}: trust lists {bad[0]!r}, which is not a module or package name "
                          f"(e.g. my_project or my_project.models)")
    python = tuple((root / p).resolve() for p in python)
    for prefix in trust:   # a project trusts its own code only: not os, torch or an installed package
        top = prefix.split(".")[0]
        if top in sys.stdlib_module_names or not any((f / top).is_dir() or (f / f"{top}.py").is_file()
                                                     for f in python):
            raise ConfigError(f"{path}: trust lists {prefix!r}, but {top} is not a package of this "
                              f"project's python folders ({', '.join(map(str, python)) or 'none listed'}); "
                              f"a project may trust its own code only (--trust opens anything else)")
    conf = raw.get("conf", "conf")
    if not isinstance(conf, str):
        raise ConfigError(f"{path}: conf must be a folder name, got {conf!r}")
    conf_path = (root / conf).resolve()
    return Project(root=root, name=str(raw.get("name") or root.name), trust=tuple(trust),
                   conf=conf_path if conf_path.is_dir() else None, python=python)


def current() -> Project | None:
    """The open project (read anew each call: cheap, and the cwd or AEXP_PROJECT may change)."""
    root = find()
    return read(root) if root else None


def activate() -> Project | None:
    """Open the project: its python folders go first on sys.path (once). Returns it, or None."""
    project = current()
    if project:
        for folder in reversed(project.python):
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
    return project


def searchpath_override() -> list[str]:
    """`hydra.searchpath=[file://PROJECT/conf]` for the open project, else []."""
    project = current()
    return project.searchpath_override() if project else []
