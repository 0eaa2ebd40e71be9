"""The reference pages that are generated from the code at every build, so they cannot drift
from it: one page per config group (each option's opening comment and each field's default and
the comment beside it in conf/), the CLI (aexp.cli's command table and each command's own
--help), the Python API (mkdocstrings reads the docstrings) and the exit codes (the error
classes of aexp.errors). `write_all(open_page)` returns the (path, title) of every page written."""
import contextlib
import importlib
import inspect
import io
import logging
import re
from pathlib import Path

from conf_yaml import parse

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
# the groups in the order a run config names them; any other group folder follows
# the hand-written page that says more about a group's options (a table of what each is)
MORE = {"model": "models.md", "loss": "losses.md", "dataset": "data.md", "task": "tasks.md",
        "corruption": "tasks.md#denoising-corruption", "experiment": "presets.md",
        "logger": "../howto/trackers.md", "hydra/launcher": "../howto/sweeps.md",
        "hydra/sweeper": "../howto/sweeps.md"}
GROUP_ORDER = ["model", "loss", "dataset", "task", "corruption", "optimizer", "schedule",
               "logger", "experiment", "hydra/launcher", "hydra/sweeper"]


def escape(text: str) -> str:
    """Markdown-safe table-cell text, leaving `code spans` as they are."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):   # outside code spans
        parts[i] = (parts[i].replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_")
                    .replace("<", "&lt;").replace("[", "\\[").replace("]", "\\]"))
    return "`".join(parts).replace("|", "\\|")


def code(value: str) -> str:
    return f"`{value}`".replace("|", "\\|") if value else ""


def groups() -> list[str]:
    found = sorted(str(p.parent.relative_to(CONF)) for p in CONF.rglob("*.yaml")
                   if p.parent != CONF)
    found = list(dict.fromkeys(found))
    return [g for g in GROUP_ORDER if g in found] + [g for g in found if g not in GROUP_ORDER]


def group_slug(group: str) -> str:
    return group.replace("/", "-")


def field_table(fields, prefix: str) -> list[str]:
    rows = ["| field | default | meaning |", "| --- | --- | --- |"]
    for f in fields:
        if not f.value and not f.comment:
            continue   # a mapping holding fields, with nothing to say of its own
        meaning = escape(f.comment) or ("what the option builds (a class or function; "
                                         "the fields beside it are its arguments)"
                                         if f.key.endswith("_target_") else "–")
        rows.append(f"| `{prefix}{f.key}` | {code(f.value) or '(fields below)'} | {meaning} |")
    return rows if len(rows) > 2 else ["(no fields)"]


def group_page(group: str) -> str:
    files = sorted((CONF / group).glob("*.yaml"))
    lines = [f"# `{group}`", "",
             f"Options of the `{group}` config group: one YAML file each in `conf/{group}/`, "
             f"chosen with `{group}=NAME` (a list for `logger`, `+experiment=NAME` for presets). "
             "Generated from those files at every build: the text under each option is its "
             "file's opening comment, each field's meaning the comment written beside it; "
             "override any field on the command line with its full key.", ""]
    if group in MORE:
        lines += [f"What each option is, in more words: [this page](../{MORE[group]}).", ""]
    for path in files:
        option = parse(path)
        prefix = "" if option.package == "_global_" else f"{group.replace('/', '.')}."
        lines += [f"## {option.name}", ""]
        if option.description:
            lines += [escape(p) + "\n" for p in option.description.split("\n")]
        if option.defaults:
            lines += ["Composes: " + ", ".join(f"`{d}`" for d in option.defaults), ""]
        lines += field_table(option.fields, prefix) + [""]
    return "\n".join(lines)


def config_index(names: list[str]) -> str:
    top = parse(CONF / "config.yaml")
    lines = ["# Configuration", "",
             "A run is composed from `conf/config.yaml` and one option of each group; every "
             "option is a YAML file with a `_target_` naming what it builds. Facts that come from "
             "the data (input shape, channels, classes) are passed in at build time, not written "
             "in YAML. These pages are generated from `conf/` at every build.", "",
             "| group | options | default |", "| --- | --- | --- |"]
    chosen = dict(d.split(": ", 1) for d in top.defaults if ": " in d)
    for g in names:
        options = ", ".join(f"[`{p.stem}`]({group_slug(g)}.md#{p.stem})"
                            for p in sorted((CONF / g).glob("*.yaml")))
        lines.append(f"| [`{g}`]({group_slug(g)}.md) | {options} | {code(chosen.get(g, ''))} |")
    lines += ["", "## Top-level keys (`conf/config.yaml`)", "",
              escape(top.description), ""] + field_table(top.fields, "")
    return "\n".join(lines) + "\n"


def command_help(target: str) -> str:
    """A command's own `--help` text (argparse prints it and exits 0). A command that cannot
    be imported is a warning, which fails a --strict build."""
    module, function = target.split(":")
    try:
        main = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as e:
        logging.getLogger("mkdocs.plugins.aexp").warning(f"aexp {target}: {e}")
        return f"(not importable: {e})"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["--help"])
    return out.getvalue().rstrip()


def cli_page() -> str:
    from aexp import cli
    lines = ["# Command line", "",
             "`aexp <command> [args]`. Generated from the command table in `aexp/cli.py` and "
             "each command's own `--help` at every build.", "",
             "| command | arguments | what it does |", "| --- | --- | --- |"]
    lines += [f"| [`{c.name}`](#{c.name}) | `{c.args}` | {escape(c.help)} |" for c in cli.COMMANDS]
    lines += ["", "Every command also takes `--trust` (open run folders whose stored config names "
              "your own classes; see [the trust boundary](../explanation/trust.md)). User errors "
              "print one line starting with `aexp: error:`; see [exit codes](exit-codes.md).", "",
              "```text", cli.USAGE.rstrip(), "```", ""]
    for c in cli.COMMANDS:
        lines += [f"## {c.name}", "", escape(c.help[0].upper() + c.help[1:]) + ".", ""]
        if c.hydra:
            lines += [f"`aexp {c.name}` takes Hydra overrides of the run config: `group=option`, "
                      "`key=value`, `+key=value` to add, `-m` for a multirun over comma-separated "
                      "values. Every group, option and field is in the "
                      "[configuration reference](config/index.md).", ""]
        else:
            lines += ["```text", command_help(c.target), "```", ""]
    return "\n".join(lines)


def api_page() -> str:
    import aexp
    lines = ["# Python API", "",
             "`import aexp` imports neither torch nor Hydra; these names load on first use. "
             "Each goes through what the CLI uses: the same config tree, job, run-folder reader "
             "and evaluation. Generated from the docstrings at every build; "
             "[reading a run from a notebook](../howto/notebook.md) shows them together.", ""]
    lines += [f"::: aexp.api.{name}" for name in aexp.API]
    lines += ["", "::: aexp.api.Run", "",
              "::: aexp.report.summary.best_trial", ""]
    return "\n".join(lines)


def error_classes():
    from aexp import errors
    seen, todo = [], [errors.AexpError]
    while todo:
        cls = todo.pop(0)
        seen.append(cls)
        todo += sorted(cls.__subclasses__(), key=lambda c: c.__name__)
    return [c for c in seen if c.__module__ == errors.__name__]


def exit_codes_page() -> str:
    from aexp import errors
    lines = ["# Exit codes", "",
             "Generated from `aexp/errors.py` at every build. Errors caused by the input print "
             "one line, `aexp: error: ...`, and no traceback (`AEXP_DEBUG=1` shows it).", "",
             "| code | meaning |", "| --- | --- |",
             "| 0 | done |",
             "| 1 | a bug (a traceback is printed; in a sweep: a job failed with one, see its "
             "`FAILED` file) |"]
    by_code: dict[str, list[str]] = {}
    for cls in error_classes():
        if cls is errors.Interrupted:
            code_text = "130 / 143"
        else:
            code_text = str(cls.exit_code)
        doc = " ".join(inspect.getdoc(cls).split())
        by_code.setdefault(code_text, []).append(f"`{cls.__name__}`: {escape(doc)}")
    for code_text, meanings in sorted(by_code.items(), key=lambda kv: int(kv[0].split()[0])):
        lines.append(f"| {code_text} | {'<br>'.join(meanings)} |")
    lines += ["", "130 and 143 are 128 + the signal number (SIGINT, SIGTERM): training stopped at "
              "a step boundary after saving a resumable checkpoint; Ctrl-C outside the training "
              "loop also exits 130. In a sweep the command exits with the highest code of its "
              "jobs, and every failed job has a `FAILED` file holding its message.", ""]
    return "\n".join(lines)


def title_of(text: str) -> str:
    match = re.search(r"^# (.+)$", text, re.M)
    return match.group(1).strip() if match else "untitled"


def write_all(open_page) -> list[tuple[str, str]]:
    """Write every generated page through `open_page(path, mode)` (mkdocs_gen_files.open)."""
    names = groups()
    pages = {"reference/config/index.md": config_index(names)}
    pages.update({f"reference/config/{group_slug(g)}.md": group_page(g) for g in names})
    pages["reference/cli.md"] = cli_page()
    pages["reference/api.md"] = api_page()
    pages["reference/exit-codes.md"] = exit_codes_page()
    for path, text in pages.items():
        with open_page(path, "w") as f:
            f.write(text)
    return [(path, title_of(text)) for path, text in pages.items()]
