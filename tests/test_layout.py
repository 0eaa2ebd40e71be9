"""The package's shape, read from the source with `ast` (nothing is imported): no import cycle,
arrows only pointing down the layers, `run/` and `report/` meeting only through run-folder files,
no aexp import hidden in a function, no module over 300 lines."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "aexp"
MAX_LINES = 300

# Layers, top to bottom; a module may import modules of a lower layer, or of its own package.
# The bottom layer is shared plumbing: its modules may use each other (cycles aside).
LAYERS = [
    ("aexp.cli", "aexp.api"),   # the two ways in: the command table and the Python API,
    ("aexp.jobs", "aexp.contract", "aexp.scaffold"),   # which both run one job through aexp.jobs;
                                # the model contract checks and `aexp init`, commands of their own
    ("aexp.run", "aexp.report"),
    ("aexp.assemble",),
    ("aexp.data", "aexp.models", "aexp.losses"),
    ("aexp.io", "aexp.checkpoint", "aexp.draw", "aexp.errors", "aexp.trust", "aexp.project", "aexp"),
]
# Only the command table imports aexp modules inside functions: `aexp render` and the other
# argparse commands start without torch and Hydra, which `aexp.assemble` brings.
LAZY_IMPORTS_ALLOWED = {"aexp.cli"}
# The one arrow pointing up: the package's module-level __getattr__ hands out the Python API
# (`aexp.train`, ...) on first use, inside a function, so `import aexp` stays cheap.
API_FACADE = ("aexp", "aexp.api")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known) -> list[tuple[str, bool]]:
    """(imported aexp module, whether the import sits inside a function) for every import."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node, nested):
        for child in ast.iter_child_nodes(node):
            inside = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, inside) for a in child.names if a.name.split(".")[0] == "aexp")
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module.split(".")[0] == "aexp":
                    for a in child.names:   # `from aexp.run import steps` imports aexp.run.steps
                        sub = f"{child.module}.{a.name}"
                        out.append((sub if sub in known else child.module, inside))
            visit(child, inside)

    visit(tree, False)
    return out


def layer(module: str) -> tuple[int, str]:
    for rank, names in enumerate(LAYERS):
        for n in names:
            if module == n or (n != "aexp" and module.startswith(n + ".")):
                return rank, n
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS")


GRAPH = {name: imports(name, path, modules()) for name, path in modules().items()}


def test_every_module_is_placed_in_a_layer_and_short():
    for name, path in modules().items():
        layer(name)
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES})"


def test_no_import_cycle():
    edges = {m: {t for t, _ in ts if t in GRAPH and t != m} for m, ts in GRAPH.items()}
    state, stack = {}, []

    def dfs(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                dfs(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            dfs(m)


def test_imports_point_down_and_run_and_report_never_meet():
    bad = []
    for m, targets in GRAPH.items():
        rank, pkg = layer(m)
        for t, inside in targets:
            if t == m or (inside and (m, t) == API_FACADE):
                continue
            t_rank, t_pkg = layer(t)
            if {pkg, t_pkg} == {"aexp.run", "aexp.report"}:
                bad.append(f"{m} imports {t}: run/ and report/ meet only through run-folder files")
            elif not (t_rank > rank or t_pkg == pkg or rank == t_rank == len(LAYERS) - 1):
                bad.append(f"{m} (layer {pkg}) imports {t} (layer {t_pkg}), which is not below it")
    assert not bad, "\n".join(bad)


def test_no_aexp_import_inside_a_function():
    hidden = [f"{m} imports {t} inside a function" for m, ts in GRAPH.items()
              for t, inside in ts if inside and m not in LAZY_IMPORTS_ALLOWED and (m, t) != API_FACADE]
    assert not hidden, "\n".join(hidden)


def test_the_checks_can_fail(tmp_path, monkeypatch):
    """The readers above see a cycle, an upward import and a hidden import when there is one."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from aexp.run import train\n")
    b.write_text("def f():\n    import aexp.report.evaluate\n")
    known = {"aexp.run.train", "aexp.run", "aexp.report.evaluate"}
    assert imports("aexp.io", a, known) == [("aexp.run.train", False)]
    assert imports("aexp.io", b, known) == [("aexp.report.evaluate", True)]
    assert layer("aexp.io")[0] > layer("aexp.run.train")[0]   # io importing run points up
