"""`--help` of each entry point: the groups and settings it takes, one line each, read from the specs'
own comments and the config files' first lines, so the help cannot drift from the code."""

from __future__ import annotations

import dataclasses
import inspect
import re
from importlib import resources
from typing import Any, Optional

from gptlab.config import DEFAULT_OPTIONS

FIELD_LINE = re.compile(r"^\s+(\w+):[^=]*=\s*(.*?)\s*(?:#\s*(.*))?$")


def field_comments(spec: type) -> dict[str, str]:
    """name -> the comment written beside the field in the spec's source (base classes included)."""
    out: dict[str, str] = {}
    for cls in reversed(spec.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        for line in inspect.getsource(cls).splitlines():
            m = FIELD_LINE.match(line)
            if m and m.group(3):
                out[m.group(1)] = m.group(3)
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def settings_lines(spec: type, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    """One line per setting: key=default  comment. Nested specs (eval's data.*) are flattened."""
    comments, lines = field_comments(spec), []
    for f in dataclasses.fields(spec):
        if f.name in skip:
            continue
        value = _default(f)
        if dataclasses.is_dataclass(value):
            lines += settings_lines(type(value), f"{prefix}{f.name}.")
            continue
        shown = "???" if value == "???" else repr(value) if isinstance(value, str) else value
        lines.append(f"  {prefix}{f.name}={shown}".ljust(34) + f"  {comments.get(f.name, '')}".rstrip())
    return [ln for ln in lines if "output_dir=" not in ln]  # where Hydra puts the run: not a setting


def _first_comment(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("# ").rstrip()
    return ""


def group_lines(groups: list[str], defaults: dict[str, Optional[str]]) -> list[str]:
    """One line per option of each group, the default marked with *."""
    conf = resources.files("gptlab.conf")
    lines = []
    for group in groups:
        options: dict[str, str] = {}
        for (g, name), spec in DEFAULT_OPTIONS.items():
            if g == group:
                options[name] = (inspect.getdoc(spec) or "").split("\n\n")[0].replace("\n", " ")
        folder = conf / group
        if folder.is_dir():
            for f in folder.iterdir():
                if f.name.endswith(".yaml"):
                    options[f.name[:-5]] = _first_comment(f.read_text(encoding="utf-8"))
        lines.append(f"  {group}:" + ("" if defaults.get(group) else "  (none by default)"))
        for name in sorted(options):
            mark = "*" if defaults.get(group) == name else " "
            about = options[name] if len(options[name]) <= 90 else options[name][:89].rstrip() + "…"
            lines.append(f"   {mark}{group}={name}".ljust(34) + f"  {about}".rstrip())
    return lines


def train_defaults() -> dict[str, Optional[str]]:
    """The group choices of conf/train.yaml's defaults list."""
    import yaml

    text = (resources.files("gptlab.conf") / "train.yaml").read_text(encoding="utf-8")
    return {k: v for entry in yaml.safe_load(text)["defaults"] if isinstance(entry, dict) for k, v in entry.items()}


def entry_help(title: str, usage: str, spec: type, groups: list[str] = (), defaults: Optional[dict] = None,
               skip: tuple[str, ...] = (), notes: str = "") -> str:
    parts = [f"{title}\n\nusage: {{command}} {usage}\n"]
    if groups:
        parts.append("groups (pick one option; * the default):")
        parts += group_lines(list(groups), defaults or {})
        parts.append("")
    parts.append("settings (key=default):")
    parts += settings_lines(spec, skip=skip)
    if notes:
        parts.append("\n" + notes)
    return "\n".join(parts)
