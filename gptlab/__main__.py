"""The front door: `gptlab <command> ...` (or `python -m gptlab <command> ...`), the same as
`python -m gptlab.<command> ...`."""

from __future__ import annotations

import os
import runpy
import sys
from typing import Optional, Sequence

COMMANDS = {
    "train": "train a GPT (Hydra configs; --help lists the groups)",
    "generate": "sample text from a trained model",
    "eval": "loss, perplexity and bits per character of a trained model (data=chat: exact-match of answers)",
    "chat": "talk to a model fine-tuned on conversations",
    "serve": "a model over HTTP: OpenAI's API, a chat page, many clients batched",
    "inspect": "attention maps of a trained model for one prompt (PNG, HTML page, summary)",
    "export": "a trained model as a Hugging Face folder (transformers loads it)",
    "plot": "loss curves of a run or a sweep as one PNG (against steps and wall time)",
}


def usage() -> str:
    lines = ["usage: gptlab <command> [args ...]   (each command's --help says what it takes)", "", "commands:"]
    lines += [f"  {name:<10}{about}" for name, about in COMMANDS.items()]
    return "\n".join(lines)


def unknown(name: str) -> str:
    return f"error: unknown command {name!r}: use one of {', '.join(COMMANDS)}"


def check(argv: Sequence[str], typed_as: Optional[str] = None) -> Optional[str]:
    """The `error: ...` line that `gptlab ARGV...` stops with before it runs anything, or None where the command
    line is accepted: the command, its flags (--help, --prompt, -m, --cfg job, ...) and overrides (group options,
    keys, types, ranges; each value of a sweep). Nothing runs and no file is read: ckpt_path=RUN_DIR or
    data.path=my_novel.txt pass. typed_as: the command as typed (`python -m gptlab.train`), which error lines name;
    by default `gptlab NAME`. tests/test_docs.py checks the documentation's commands with it."""
    from gptlab import cli

    if not argv or argv[0] in ("-h", "--help"):
        return None if argv else usage().splitlines()[0]
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        return unknown(name)
    return cli.check(command_line(name), rest, typed_as or f"gptlab {name}")


def command_line(name: str) -> "cli.CommandLine":
    """What `gptlab NAME` takes: its entry point says so when imported (training's is known without importing
    it, and Lightning with it)."""
    import importlib

    from gptlab import cli, config

    config.register_configs()  # the schemas Hydra composes with, which importing an entry point also registers
    if name not in cli.COMMAND_LINES:
        importlib.import_module(f"gptlab.{name}")
    return cli.COMMAND_LINES[name]


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if args else 2)
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(unknown(name), file=sys.stderr)
        sys.exit(2)
    os.environ["GPTLAB_COMMAND"] = f"gptlab {name}"  # hints name the command as typed
    answered(name, rest)
    sys.modules.pop(f"gptlab.{name}", None)  # imported by the check: runpy runs it afresh as __main__ (no warning)
    sys.argv = [sys.argv[0], *rest]
    # run the entry as __main__ with its own module spec, so that a DDP launch re-runs `python -m gptlab.<name>`
    runpy.run_module(f"gptlab.{name}", run_name="__main__", alter_sys=True)


def answered(name: str, rest: list[str]) -> None:
    """--help and a mistake on the command line answered before the command's module is imported (for training,
    before Lightning is): exit with the help (0) or the error line (2); return when the command should run."""
    from gptlab import cli

    line = command_line(name)
    cli.COMMAND = f"gptlab {name}"
    cli.answer_help(line.help, rest)
    if "-m" in rest or "--multirun" in rest:  # a sweep records the jobs that cannot run and goes on with the others
        return
    error = check([name, *rest])
    if error is not None:
        print(error, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
