"""`--help` of each entry point: the groups and settings it takes, one line each, read from the specs'
own comments and the config files' first lines, so the help cannot drift from the code."""

from __future__ import annotations

import dataclasses
import inspect
import re
from importlib import resources
from typing import Any, Optional

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from gptlab.config import DEFAULT_OPTIONS, flat, TrainConfig

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


def train_groups() -> dict[str, tuple[Any, list[str]]]:
    """Each group of conf/train.yaml: its default option (a list, [], for a group taken as a list: lever=[a,b])
    and every option it has, as Hydra finds them."""
    with initialize_config_module("gptlab.conf", version_base="1.3"):
        choices = compose("train", return_hydra_config=True).hydra.runtime.choices
        loader = GlobalHydra.instance().config_loader()
        # (Hydra lists them last to first and records no choice for a list; options registered while running,
        # as init_from's model, are left out)
        defaults = {g: c for g, c in reversed(choices.items()) if not g.startswith("hydra")}
        defaults |= {g: [] for g in loader.list_groups("") if g not in defaults and g != "hydra"}
        return {g: (c, [o for o in loader.get_group_options(g) if (g, o) in DEFAULT_OPTIONS or _file(g, o).is_file()])
                for g, c in defaults.items()}


def _file(group: str, option: str) -> Any:
    return resources.files("gptlab.conf") / group / f"{option}.yaml"


def about(group: str, option: str) -> str:
    """An option's one-line description: the first comment of its file, or its spec's docstring."""
    spec = DEFAULT_OPTIONS.get((group, option))
    if spec is not None:
        return (inspect.getdoc(spec) or "").split("\n\n")[0].replace("\n", " ")
    text = _file(group, option).read_text(encoding="utf-8")
    return next((ln.lstrip("# ").rstrip() for ln in text.splitlines() if ln.startswith("#")
                 and not ln.startswith("# @package")), "")


def group_lines(groups: dict[str, tuple[Any, list[str]]]) -> list[str]:
    """One line per option of each group, the default marked with *."""
    lines = []
    for group, (default, options) in groups.items():
        lines.append(f"  {group}:" + ("  (any number: " + f"{group}=[a,b]; none by default)" if default == []
                                      else "" if default else "  (none by default)"))
        for name in options:
            text = about(group, name)
            text = text if len(text) <= 90 else text[:89].rstrip() + "…"
            lines.append(f"   {'*' if default == name else ' '}{group}={name}".ljust(34) + f"  {text}".rstrip())
    return lines


def group_help(group: str) -> str:
    """`--help GROUP`: what each option of a group sets, key by key (a recipe: the keys it changes)."""
    groups = train_groups()
    if group not in groups:
        return f"error: no group {group!r}: one of {', '.join(groups)}"
    default, options = groups[group]
    with initialize_config_module("gptlab.conf", version_base="1.3"):
        base = flat(OmegaConf.to_container(compose("train")))
        out = []
        for option in options:
            cfg = flat(OmegaConf.to_container(compose("train", [f"{group}={option}"])))
            keys = {k: v for k, v in cfg.items() if k.startswith(f"{group}.") or base.get(k, object()) != v}
            out.append(f"{group}={option}{'  (the default)' if option == default else ''}: {about(group, option)}")
            out += [f"  {k}={v}" for k, v in keys.items()] + [""]
    return "\n".join(out).rstrip()


def entry_help(title: str, usage: str, spec: type, groups: Optional[dict] = None, skip: tuple[str, ...] = (),
               notes: str = "") -> str:
    parts = [f"{title}\n\nusage: {{command}} {usage}\n"]
    if groups:
        parts += ["groups (pick one option; * the default; --help GROUP: what each option sets):",
                  *group_lines(groups), ""]
    parts += ["settings (key=default):", *settings_lines(spec, skip=skip)]
    if notes:
        parts.append("\n" + notes)
    return "\n".join(parts)


def train_help(group: Optional[str] = None) -> str:
    """gptlab train --help [GROUP]."""
    if group:
        return group_help(group)
    groups = train_groups()
    return entry_help(
        "Train a GPT; every run gets a folder under outputs/ with checkpoints and TensorBoard logs.",
        "[group=option ...] [key=value ...]   (-m: a sweep over comma-separated values)", TrainConfig,
        groups, skip=tuple(groups),
        notes="Any key of a group is set the same way (model.n_layer=4, optim.lr=3e-4, trainer.max_steps=500);\n"
              "every key with its value: {command} --cfg job. Paths (data.path=, ckpt_path=) are taken as typed.")
