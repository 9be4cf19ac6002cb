"""Running a Hydra entry point as a newcomer expects: free text taken as typed, user mistakes in one clear
line (not a traceback), `--help` that lists what this entry point takes, and no empty run folder left by
a run that failed before it started."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NoReturn, Optional, Sequence, TypeVar, Union

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from gptlab.config import TRAIN_FREE_TEXT, check_train, groups, literal, options, to_spec
from gptlab.errors import GptlabError, did_you_mean
from gptlab.rundir import RECORD
from gptlab.runlog import traceback_of
from gptlab.model import ConfigError
from gptlab.tokenizers import TokenizerError
from gptlab.usage import entry_help, train_help

T = TypeVar("T")
COMMAND = "python -m gptlab.train"  # the entry point being run, for hints; set by run()
COMMAND_ENV = "GPTLAB_COMMAND"  # how the user typed it (`gptlab train`), set by the `gptlab` front door
USER_ERRORS = (GptlabError, ConfigError, TokenizerError, HydraException, OmegaConfBaseException)


def one_line(ex: BaseException) -> str:
    """Hydra and OmegaConf spread a message over several lines (key, full_key, object_type); keep the gist."""
    cause = ex.__cause__
    if isinstance(ex, InstantiationException) and cause is not None:
        # building an object from the config failed: the cause is the message that matters
        if isinstance(cause, (GptlabError, ConfigError, TokenizerError)):
            return one_line(cause)
        node = str(ex).split("full_key:")[-1].strip() if "full_key:" in str(ex) else "config"
        text = f"{node}: {' '.join(str(cause).split())}"
        if "No supported gpu backend" in text:
            text += " This machine has no GPU: use trainer=cpu (or trainer.accelerator=cpu)."
        return text
    if str(ex).startswith("Could not override") and "No match in the defaults list" in str(ex):
        return f"{COMMAND} has no option {str(ex).split(chr(39))[1]}: {COMMAND} --help lists what it takes"
    if str(ex).startswith("Could not override") and isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        key = str(ex).split("'")[1]
        return f"unknown config key {key}{closest_key(cause)}: check its spelling | {COMMAND} --help lists what it takes"
    missing = re.search(r"Could not (?:load|find) '([\w/]+)/([^']+)'", str(ex))
    if missing:  # an option no group has: name the ones it has
        group, option = missing.groups()
        more = f"{COMMAND} --help {group} says what each sets" if "/" not in group else f"{COMMAND} --help"
        return (f"{group}={option} is not an option{did_you_mean(option, options(group))}: {group} is one of "
                f"{', '.join(options(group))} | {more}")
    parts = [str(ex)]
    if isinstance(ex, HydraException) and isinstance(cause, OmegaConfBaseException):
        parts.append(str(cause).splitlines()[0] if str(cause) else "")
    if isinstance(ex, OmegaConfBaseException):
        parts = [str(ex).splitlines()[0]]
    text = " ".join(" ".join(parts).split()).split(" Config search path")[0]
    if "LexerNoViableAlt" in text or "mismatched input" in text or "missing EQUAL" in text:
        # a word of free text the shell split off: `prompt=O Romeo, Romeo` reaches Hydra as three arguments
        word = text.split("LexerNoViableAltException: ")[-1].split(" ^")[0] if "LexerNoViableAlt" in text else ""
        return (f"{word + ': ' if word else ''}not a key=value setting. Text with spaces, commas or quotes "
                f"goes in quotes: {COMMAND} ... prompt=\"O Romeo, Romeo\" (or --prompt O Romeo, Romeo)")
    if isinstance(ex, (HydraException, OmegaConfBaseException)):
        text += f" | every key: {COMMAND} --cfg job"
    return text


def closest_key(error: BaseException) -> str:
    """" (did you mean trainer.max_time?)" for OmegaConf's unknown-key error: the closest key beside it (at the top,
    the groups left at null too: experiment, lever, ...)."""
    parent, key, full = (getattr(error, a, None) for a in ("parent_node", "key", "full_key"))
    if parent is None or key is None:
        return ""
    prefix = str(full)[: -len(str(key))] if full and str(full).endswith(str(key)) else ""
    known = [str(k) for k in parent.keys()] + (groups() if not prefix else [])
    hint = did_you_mean(str(key), known)
    return hint.replace("mean ", f"mean {prefix}", 1) if prefix else hint


class _DropBanners(logging.Filter):
    """Lightning's start-up lines that say nothing about this run (gptlab prints its own summary)."""

    NOISE = ("Tip:", " available: ", "`Trainer(", "LOCAL_RANK:", "`Trainer.fit` stopped", "Automatic Mixed Precision")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.NOISE)


def quiet_lightning() -> None:
    """Lightning without its banners, and without a warning from its own insides that no user can act on."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropBanners())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def quote(text: str) -> str:
    """`text` as a Hydra quoted string that Hydra and OmegaConf turn back into exactly `text`."""
    text = literal(text)  # for OmegaConf
    # Hydra: inside '...' a backslash escapes only a quote or the closing quote; double those runs
    text = re.sub(r"(\\*)('|\Z)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text)
    return f"'{text}'"


OVERRIDE = re.compile(r"[~+]{0,2}[A-Za-z_][\w.@/-]*=")  # what starts a Hydra override: key=, +key=, ~key=


def verbatim(argv: Sequence[str], keys: Sequence[str]) -> list[str]:
    """Free text reaches the config as typed: `key=ANY TEXT`, `--key ANY TEXT` and `--key=ANY TEXT` become
    Hydra quoted strings for the keys that take free text (prompts, messages, paths). `--key` takes every
    word after it up to the next override or flag, so an unquoted `--prompt O Romeo, Romeo!` is one prompt
    (the shell has already turned runs of spaces into one). A value already written in Hydra's quotes
    (`'prompt="..."'`) is left as it is."""
    out, args = [], list(argv)
    while args:
        arg = args.pop(0)
        flag = arg[2:].split("=", 1)[0].replace("-", "_") if arg.startswith("--") else None
        if flag in keys:
            if "=" in arg:
                value = arg.split("=", 1)[1]
            else:
                words = []
                while args and (not words or not (OVERRIDE.match(args[0]) or args[0].startswith("-"))):
                    words.append(args.pop(0))
                value = " ".join(words)
            out.append(f"{flag}={quote(value)}")
            continue
        key, eq, value = arg.partition("=")
        if eq and key in keys and not (len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""):
            arg = f"{key}={quote(value)}"
        out.append(arg)
    return out


def run(hydra_main: Callable[[], object], free_text: Sequence[str] = (),
        help: Union[str, Callable[[Optional[str]], str], None] = None, positional: Optional[str] = None) -> None:
    """Call a @hydra.main function; a user error prints `error: ...` on stderr and exits with status 2.

    free_text: the keys whose values are taken as typed (see `verbatim`). help: the text `--help` prints, or
    a function of the word after it (`--help model`) that makes the text. positional: the key a first argument
    without `=` sets (`gptlab plot DIR` is `gptlab plot dir=DIR`).
    Hydra catches exceptions itself and prints them over several lines unless HYDRA_FULL_ERROR is set;
    we set it so they reach us. If you set HYDRA_FULL_ERROR yourself, you get the full traceback.
    Processes a gptlab command starts (DDP ranks) inherit its choice through GPTLAB_TRACEBACK.
    """
    global COMMAND
    module = hydra_main.__module__
    if module == "__main__":  # run with -m: the module's real name is in its spec
        module = getattr(getattr(sys.modules["__main__"], "__spec__", None), "name", module)
    COMMAND = os.environ.get(COMMAND_ENV) or f"python -m {module}"
    answer_help(help, sys.argv[1:])
    if positional and len(sys.argv) > 1 and "=" not in sys.argv[1] and not sys.argv[1].startswith("-"):
        sys.argv[1] = f"{positional}={sys.argv[1]}"
    sys.argv[1:] = verbatim(sys.argv[1:], free_text)
    inherited = os.environ.get("GPTLAB_TRACEBACK")
    wants_traceback = inherited == "1" if inherited is not None else os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["GPTLAB_TRACEBACK"] = "1" if wants_traceback else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except USER_ERRORS as ex:  # composing the config failed, before any job ran
        if wants_traceback:
            raise
        fail(ex)


def answer_help(help: Union[str, Callable[[Optional[str]], str], None], argv: Sequence[str]) -> None:
    """`-h`/`--help [WORD]` anywhere in argv: print the help (of WORD, a group) and exit; otherwise return."""
    asked = next((i for i, a in enumerate(argv) if a in ("-h", "--help")), None)
    if help is None or asked is None:
        return
    word = argv[asked + 1] if asked + 1 < len(argv) else None
    text = help if isinstance(help, str) else help(word)
    try:
        print(text.replace("{command}", COMMAND), file=sys.stderr if text.startswith("error:") else sys.stdout,
              flush=True)
    except BrokenPipeError:  # `--help | head`: the reader has what it wanted
        sys.stdout = open(os.devnull, "w")
    sys.exit(2 if text.startswith("error:") else 0)


@dataclass(frozen=True)
class CommandLine:
    """What an entry point's command line takes, as `run` is given it, for `check`: its config, the keys of free
    text, its --help, the key of a bare first argument, and `checks`: what its job checks first of a composed
    config (unknown keys, types, ranges), reading no file."""

    config_name: str
    free_text: Sequence[str] = ()
    help: Union[str, Callable[[Optional[str]], str], None] = None
    positional: Optional[str] = None
    checks: Optional[Callable[[DictConfig], object]] = None


# config name -> its entry point's, filled as each entry is imported; training's is known without importing it
# (and Lightning), so that `gptlab train --help` and a typo are answered at once
COMMAND_LINES: dict[str, CommandLine] = {"train": CommandLine("train", TRAIN_FREE_TEXT, train_help, checks=check_train)}


def check(line: CommandLine, argv: Sequence[str], command: str) -> Optional[str]:
    """The `error: ...` line that `command ARGV...` stops with before its job begins, or None where the command
    line is accepted. Nothing runs and no file is read (ckpt_path=RUN_DIR or data.path=my_novel.txt pass): what
    `run` and Hydra do before the job is done, up to `line.checks` of each config the command would run with
    (each value of a sweep's, one at a time). command: as the user typed it, which the error lines name."""
    global COMMAND
    saved, COMMAND = COMMAND, command
    try:
        return _check(line, list(argv))
    except USER_ERRORS as ex:
        return f"error: {one_line(ex)}"
    finally:
        COMMAND = saved


@contextlib.contextmanager
def _hydra_composes() -> Iterator[None]:
    """Hydra's compose API on gptlab's configs, or the one already set up."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_module("gptlab.conf", version_base="1.3"):
        yield


def _check(line: CommandLine, argv: list[str]) -> Optional[str]:
    from hydra import compose
    from hydra._internal.utils import get_args_parser  # the parser @hydra.main reads the command line with
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    asked = next((i for i, a in enumerate(argv) if a in ("-h", "--help")), None)
    if line.help is not None and asked is not None:  # as `run` does
        word = argv[asked + 1] if asked + 1 < len(argv) else None
        text = line.help if isinstance(line.help, str) else line.help(word)
        return text.replace("{command}", COMMAND).splitlines()[0] if text.startswith("error:") else None
    if line.positional and argv and "=" not in argv[0] and not argv[0].startswith("-"):
        argv[0] = f"{line.positional}={argv[0]}"
    argv = verbatim(argv, line.free_text)
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            args = get_args_parser().parse_args(argv)
    except SystemExit:  # argparse's word on an unknown flag
        return f"error: {said.getvalue().strip().splitlines()[-1].split('error: ', 1)[-1]}"
    shows = args.cfg is not None or args.info is not None or args.shell_completion or args.hydra_help
    if args.resolve and args.cfg is None:  # Hydra's words (a ValueError there)
        return "error: The --resolve flag can only be used in conjunction with --cfg or --help"
    if args.run + (args.cfg is not None) + args.multirun + args.shell_completion + (args.info is not None) > 1:
        return "error: Only one of --run, --multirun, --cfg, --info and --shell_completion can be specified"
    config_name = args.config_name or line.config_name
    overrides = list(args.overrides)
    parsed = OverridesParser.create().parse_overrides(overrides)
    # a sweep's values, each checked in turn; interval(...) has none to list (a sampler draws from it)
    sweeps = {i: list(o.sweep_string_iterator()) if o.is_discrete_sweep() else []
              for i, o in enumerate(parsed) if o.is_sweep_override()}
    first = [f"{o.get_key_element()}={sweeps[i][0]}" if sweeps.get(i) else o.input_line
             for i, o in enumerate(parsed) if i not in sweeps or sweeps[i]]
    with _hydra_composes():
        cfg = compose(config_name, first, return_hydra_config=True)
        multirun = args.multirun or cfg.hydra.mode == RunMode.MULTIRUN
        if sweeps and (shows or not multirun):  # Hydra's own error, as the shell gave it: a sweep needs -m
            GlobalHydra.instance().hydra.compose_config(config_name, overrides, RunMode.RUN, from_shell=True)
        if shows or line.checks is None:
            return None
        jobs = [cfg]
        for i, values in sweeps.items():
            at = sum(1 for j in range(i) if j not in sweeps or sweeps[j])  # where the sweep is in `first`
            for value in values[1:]:
                job = [*first[:at], f"{parsed[i].get_key_element()}={value}", *first[at + 1:]]
                jobs.append(compose(config_name, job, return_hydra_config=True))
        for job_cfg in jobs:  # the job's config, as the task gets it: without the hydra node
            line.checks(OmegaConf.masked_copy(job_cfg, [k for k in job_cfg if k != "hydra"]))
    return None


def entry(task: Callable[[DictConfig], object], config_name: str, free_text: Sequence[str], spec: type, title: str,
          usage: str, notes: str = "", positional: Optional[str] = None) -> Callable[[], None]:
    """An entry point's main(): `task` run by Hydra on conf/<config_name>.yaml, through `run`, with a --help that
    lists the settings of `spec`; `positional`: the key a bare first argument sets."""
    hydra_main = hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name=config_name)
    help_text = lambda _: entry_help(title, usage, spec, notes=notes)  # noqa: E731
    COMMAND_LINES[config_name] = CommandLine(config_name, tuple(free_text), help_text, positional,
                                             checks=lambda cfg: to_spec(spec, cfg, config_name))
    return lambda: run(hydra_main(reports_errors(task)), free_text, help_text, positional)


def fail(ex: BaseException) -> NoReturn:
    print(f"error: {one_line(ex)}", file=sys.stderr)
    sys.exit(2)


def reports_errors(task: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """Wrap a Hydra task function: a user error inside the job ends it with one line and exit status 2.

    (Caught here rather than after Hydra returns, because Hydra writes its own "Error executing job"
    line for exceptions that leave the task function; SystemExit passes it silently.)
    """

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> T:
        try:
            return task(cfg)
        except USER_ERRORS as ex:
            remove_if_unused(cfg)
            if os.environ.get("GPTLAB_TRACEBACK") == "1":
                raise
            fail(ex)
        except KeyboardInterrupt:  # Ctrl-C before training began (or twice): nothing to save, no empty folder
            removed = remove_if_unused(cfg)
            print("\ninterrupted before the run began: nothing saved, its run folder removed" if removed else
                  "\ninterrupted: stopped at once", file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapper


def last_words(ex: BaseException) -> Optional[str]:
    """What the terminal shows of an exception that ends a job (for its log): the one `error:` line of a user's
    error (printed by reports_errors), "interrupted" for Ctrl-C, the traceback of anything else; nothing for an
    exit, whose message was printed already."""
    if isinstance(ex, KeyboardInterrupt):
        return "interrupted"
    if isinstance(ex, USER_ERRORS) and os.environ.get("GPTLAB_TRACEBACK") != "1":
        return f"error: {one_line(ex)}"
    return traceback_of(ex)


def remove_if_unused(cfg: DictConfig) -> bool:
    """A run that failed before it started leaves no folder: Hydra made the run dir (with .hydra/ and a log)
    before the job ran; if nothing else was written there, take it away again. Whether it was taken away."""
    try:
        out = Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # not under Hydra's main (tests call the task with a composed config)
        return False
    if out.resolve() == Path.cwd().resolve() or not out.is_dir():
        return False
    made_by_hydra = {RECORD} | {p.name for p in out.glob("*.log")}
    if not all(p.name in made_by_hydra for p in out.iterdir()):
        return False
    shutil.rmtree(out, ignore_errors=True)
    for parent in (out.parent, out.parent.parent):  # outputs/<date>/ too, if this was its only run
        if parent.name and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
    return True
