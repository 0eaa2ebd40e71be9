"""Run by mkdocs-gen-files at every build: writes the generated reference pages, then the nav
(SUMMARY.md, read by mkdocs-literate-nav) from the pages that exist. The nav is built, not kept
by hand, so a page added or removed by another change needs no edit and cannot break --strict;
ORDER only says which known pages come first in their section (the rest follow by name)."""
import re
import sys
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import title_of, write_all  # noqa: E402

DOCS = Path(__file__).resolve().parents[1]
SECTIONS = [("Tutorials", "tutorials"), ("How-to guides", "howto"), ("Reference", "reference"),
            ("Explanation", "explanation"), ("Results", "results")]
ORDER = {
    "tutorials": ["first-run", "mnist-ae-vae", "pooling-sweep", "own-model", "disentanglement"],
    "howto": ["resume", "sweeps", "trackers", "export", "big-datasets", "notebook", "explore",
              "project", "sampling"],
    "reference": ["config/index", "run-config", "models", "losses", "data", "tasks", "presets",
                  "cli", "api", "run-folder", "summary", "exit-codes"],
    "explanation": ["architecture", "trust", "reliability", "metrics", "performance",
                    "performance-cpu", "disentanglement-metrics", "disentangling-models"],
    "results": ["index"],
}


def sort_key(section: str, rel: str, found: list[str]):
    """Known pages in ORDER; the others as found (generated pages in the order written, then
    the pages on disk by name)."""
    stem = rel[:-3]
    order = ORDER.get(section, [])
    return (order.index(stem) if stem in order else len(order), found.index(f"{section}/{rel}"))


def nav(titles: dict[str, str]) -> str:
    lines = ["* [Home](index.md)"]
    for name, folder in SECTIONS:
        pages = sorted((p for p in titles if p.startswith(folder + "/")),
                       key=lambda p: sort_key(folder, p[len(folder) + 1:], list(titles)))
        if not pages:
            continue
        lines.append(f"* {name}")
        nested = {}   # reference/config/*: one sub-section under its index page
        for page in pages:
            parts = page[len(folder) + 1:].split("/")
            if len(parts) > 1:
                nested.setdefault(parts[0], []).append(page)
        for page in pages:
            parts = page[len(folder) + 1:].split("/")
            if len(parts) == 1:
                lines.append(f"    * [{titles[page]}]({page})")
            elif parts[0] in nested:
                group = nested.pop(parts[0])
                index = f"{folder}/{parts[0]}/index.md"
                head = f"[{titles[index]}]({index})" if index in group else parts[0]
                lines.append(f"    * {head}")
                lines += [f"        * [{titles[p]}]({p})" for p in group if p != index]
    return "\n".join(lines) + "\n"


def main():
    titles = dict(write_all(mkdocs_gen_files.open))
    for path in sorted(DOCS.rglob("*.md")):
        rel = path.relative_to(DOCS).as_posix()
        if not rel.startswith("gen/") and rel != "index.md":
            titles.setdefault(rel, re.sub(r"`", "", title_of(path.read_text())))
    titles = {k: v.replace("`", "") for k, v in titles.items()}
    with mkdocs_gen_files.open("SUMMARY.md", "w") as f:
        f.write(nav(titles))


main()
