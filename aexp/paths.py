"""Where the Hydra config tree lives, for a checkout and for an editable install alike."""
import os
from pathlib import Path


def conf_dir() -> Path:
    """`$AEXP_CONF` if set, else the `conf/` folder beside the package (checkout or editable install)."""
    env = os.environ.get("AEXP_CONF")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent.parent / "conf")
    for c in candidates:
        if (c / "config.yaml").is_file():
            return c
    raise FileNotFoundError(
        "aexp: cannot find the config tree (conf/config.yaml); set AEXP_CONF to its folder"
    )
