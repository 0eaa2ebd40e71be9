"""Reads aexp's config files for the reference pages: each option file's opening comment (what
the option is) and each field with its default and the comment written beside it (what the
field means). The comments are the documentation, so they are read as text; PyYAML would drop
them. The files follow one style (conf/config.yaml): a `key: value  # meaning` line, continued on
comment lines indented to the same column; a comment on a line of its own above a key belongs
to that key."""
import re
from dataclasses import dataclass, field
from pathlib import Path

KEY = re.compile(r"(?P<key>[A-Za-z_][\w.@/-]*)\s*:(?:\s+(?P<rest>.*)|\s*$)")


@dataclass
class Field:
    key: str           # dotted, from the file's root (the package prefix is the caller's)
    value: str         # the default as written ('' for a mapping that holds fields)
    comment: str = ""


@dataclass
class OptionFile:
    name: str
    description: str                  # the opening comment, lines joined
    package: str = ""                 # `# @package X` when the file sets one
    defaults: list[str] = field(default_factory=list)
    fields: list[Field] = field(default_factory=list)


def split_comment(rest: str) -> tuple[str, str, int | None]:
    """`value  # comment` -> (value, comment, offset of '#'); a '#' inside quotes or brackets
    is part of the value."""
    depth, quote = 0, None
    for i, ch in enumerate(rest):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "#" and depth == 0 and (i == 0 or rest[i - 1].isspace()):
            return rest[:i].strip(), rest[i + 1:].strip(), i
    return rest.strip(), "", None


def parse(path: Path) -> OptionFile:
    option = OptionFile(name=path.stem, description="")
    header: list[str] = []
    pending: list[str] = []          # comment lines waiting for the key below them
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings we are inside
    last: Field | None = None
    last_col: int | None = None       # column of the last field's trailing '#'
    in_defaults = False
    for line in path.read_text().splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if not stripped:
            if last is None:
                header.append("")
            pending = []
            continue
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if text.startswith("@package"):
                option.package = text.split(None, 1)[1] if " " in text else ""
            elif last is None and not in_defaults and not stack:
                header.append(text)
            elif last is not None and last_col is not None and indent == last_col:
                last.comment = f"{last.comment} {text}".strip()
            else:
                pending.append(text)
            continue
        if stripped.startswith("- "):
            if in_defaults:
                option.defaults.append(split_comment(stripped[2:])[0])
            elif last is not None:   # a block list's item: part of the value
                last.value = f"{last.value} {stripped}".strip()
            continue
        match = KEY.match(stripped)
        if not match:
            continue
        key = match.group("key")
        value, comment, at = split_comment(match.group("rest") or "")
        if indent == 0 and key == "defaults":
            in_defaults = True
            continue
        in_defaults = False
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        last = Field(dotted, value, " ".join(pending + [comment]).strip())
        last_col = None if at is None else len(line.rstrip()) - len(match.group("rest")) + at
        pending = []
        option.fields.append(last)
        if not value:
            stack.append((indent, key))
    # the paragraph breaks of the header survive as blank lines
    option.description = "\n".join(" ".join(p.split()) for p in "\n".join(header).split("\n\n")
                                   if p.strip())
    return option
