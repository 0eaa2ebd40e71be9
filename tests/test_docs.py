"""The documentation site: it builds with `mkdocs build --strict` (broken links, anchors and
references fail), and every `aexp` command of every tutorial runs as written, in page order, in
a fresh folder, through the real CLI. The docs convention: commands sit one a line in ```bash
blocks; a page's `<!-- docs-test: train-extra: ... -->` overrides are appended to its
`aexp train` and `aexp lr-find` lines (and only those) to keep the runs tiny; `./data` holds a tiny
fake MNIST (data/MNIST/raw) and tiny photos (data/photos) before a page runs."""
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, make_mnist, make_photos, run_cli

DOCS = ROOT / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.md"))
EXTRA = re.compile(r"<!--\s*docs-test:\s*train-extra:(.*?)-->", re.S)
BASH = re.compile(r"^```bash[^\n]*\n(.*?)^```", re.S | re.M)
# Pages that run in the fast suite (measured: each well under 20 s); the others are slow. A
# tutorial missing here still runs with `make test-slow`.
FAST = {"first-run", "mnist-ae-vae"}
QUIET = {"NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}


def commands(page: Path) -> list[list[str]]:
    """The page's `aexp` command lines, in order, as argument lists, with the page's tiny
    overrides appended to `aexp train` / `aexp lr-find`."""
    text = page.read_text()
    extra = EXTRA.search(text)
    extra = shlex.split(extra.group(1)) if extra else []
    found = []
    for block in BASH.findall(text):
        for line in block.splitlines():
            if not line.startswith("aexp "):
                continue
            args = shlex.split(line, comments=True)
            if args[1] in ("train", "lr-find"):
                args += extra
            found.append(args)
    return found


def prepare(folder: Path) -> None:
    """What the docs convention promises a page: ./data/MNIST/raw and ./data/photos."""
    make_mnist(folder / "data")
    make_photos(folder / "data" / "photos", 40)


def test_the_convention_parses_a_page(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("<!-- docs-test: train-extra: train.epochs=1 a=2 -->\n```bash\n"
                    "aexp train model=vae  # a comment\naexp render outputs/x\npip install y\n```\n"
                    "```python\naexp train nope\n```\n")
    assert commands(page) == [["aexp", "train", "model=vae", "train.epochs=1", "a=2"],
                              ["aexp", "render", "outputs/x"]]


def test_the_site_builds_strict(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists():
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]'; `make install` does)")
    proc = subprocess.run([str(mkdocs), "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **QUIET}, timeout=300)
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert proc.returncode == 0, "\n".join(warnings) or proc.stderr[-3000:]
    site = tmp_path / "site"
    for page in ("index.html", "reference/cli/index.html", "reference/api/index.html",
                 "reference/exit-codes/index.html", "reference/config/model/index.html"):
        assert (site / page).is_file(), page
    api = (site / "reference/api/index.html").read_text()
    assert "aexp.api.compose" in api and "load_run" in api   # mkdocstrings read the docstrings
    model = (site / "reference/config/model/index.html").read_text()
    assert "latent_dim" in model and "pooling" in model      # every option of conf/model/


@pytest.mark.parametrize("page", [
    pytest.param(p, id=p.stem, marks=() if p.stem in FAST else pytest.mark.slow) for p in TUTORIALS])
def test_every_tutorial_command_runs(page, tmp_path, monkeypatch, capsys):
    """Through the CLI's own entry point, in this process (as run_cli: a subprocess per command
    would spend most of the time importing torch), in the page's own fresh folder."""
    found = commands(page)
    assert found, f"{page.name} has no aexp commands in ```bash blocks"
    prepare(tmp_path)
    monkeypatch.chdir(tmp_path)
    for args in found:
        started = time.perf_counter()
        code, err = run_cli(args[1:], capsys)
        print(f"{time.perf_counter() - started:6.1f} s  {shlex.join(args)}")
        assert code == 0, f"{page.name}: `{shlex.join(args)}` exited {code}\n{err[-3000:]}"


def test_no_figure_in_two_places():
    """A picture lives once: the results pages and the README link to the files in docs/."""
    seen = {}
    for path in list(DOCS.rglob("*.png")) + list(DOCS.rglob("*.gif")) + list(DOCS.rglob("*.jpg")):
        digest = path.read_bytes()
        assert digest not in seen, f"{path} duplicates {seen[digest]}"
        seen[digest] = path


@pytest.mark.parametrize("name", ["README.md", "RESULTS.md"])
def test_top_level_pages_are_short_and_their_links_resolve(name):
    """README fits on a screen or two; its relative links (and RESULTS.md's, an index into the
    results pages) name files that exist, so they work on GitHub too."""
    text = (ROOT / name).read_text()
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, f"{name} links nowhere"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"{name} links to missing files: {missing}"
