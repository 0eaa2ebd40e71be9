"""Shared fixtures: composing the real config tree, and tiny real-format datasets made on the fly."""
import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from aexp.assemble import conf_dir

ROOT = Path(__file__).resolve().parent.parent


def options(group: str) -> list[str]:
    """Every option of a config group, from the files in conf/<group>/."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


@pytest.fixture
def compose_cfg():
    """compose_cfg(["model=vae", ...]) -> the composed run config (no Hydra run started)."""
    def _compose(overrides=()):
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    return _compose


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write an array in the IDX format MNIST uses (uint8 data, big-endian dims)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_photos(folder: Path, n: int, size: int = 16) -> Path:
    """A flat folder of `n` random RGB PNGs, `size` pixels square (an image_folder stand-in)."""
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def make_mnist(root: Path, n_train: int = 120, n_test: int = 40, name: str = "MNIST",
               compress: bool = False, seed: int = 0) -> Path:
    """Tiny MNIST-format data: each class a distinct blob position, so it is learnable."""
    rng = np.random.default_rng(seed)

    def images(n):
        labels = np.arange(n) % 10
        imgs = rng.integers(0, 40, size=(n, 28, 28))
        for i, c in enumerate(labels):
            r, col = 4 + (c // 5) * 12, 2 + (c % 5) * 5
            imgs[i, r:r + 8, col:col + 5] = 230
        return imgs, labels

    raw = root / name / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x, y = images(n)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x, compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, compress)
    return root


@pytest.fixture
def tiny_mnist(tmp_path):
    return make_mnist(tmp_path / "data")


def run_cli(args, capsys) -> tuple[int, str]:
    """`aexp ARGS` through the CLI's `main` in-process (fast): (exit code, stderr)."""
    from aexp.cli import main
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def aexp(*args, cwd=None, check=True, timeout=300):
    """Run the real `aexp` entry point in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    proc = subprocess.run([sys.executable, "-m", "aexp.cli", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"aexp {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc



def two_gloo_processes(script: str, *args) -> None:
    """Run `script` (python -c) as ranks 0 and 1, as torchrun would start two processes on this
    machine (the script sets up its gloo group from its argv: rank, then `args`); both must exit 0."""
    procs = [subprocess.Popen([sys.executable, "-c", script, str(rank), *map(str, args)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1100,900")


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium driven by selenium (the explorer's page, MLflow's UI); skipped where
    there is none."""
    import shutil
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("no headless Chromium here (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    yield driver
    driver.quit()


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Cached evaluation classifiers go to a per-session folder, not the user's ~/.cache."""
    os.environ.setdefault("AEXP_CACHE", str(tmp_path_factory.mktemp("aexp-cache")))
