"""The documentation works as written: every command that README.md and docs/**/*.md show in a fenced block is
checked against the CLI's parser and the composed configs, without running anything (gptlab.__main__.check: the
command, its flags, group options, keys, types and ranges; each value of a sweep); a command the docs show failing
(an `error: ...` line right after it) fails with that line. Scripts exist and take the flags shown, pip's extras
exist. The README is a front page (at most 300 lines), and the MkDocs site builds with warnings as errors.

What is taken for a command: each line of a ```bash / ```sh / ```shell / ```zsh block; the `$ ` lines of a
```console or plain ``` block (the rest is output), and a plain block's first line when it is a command (a
benchmark with its output below it). Comments (` # ...`), `\\` continuations, `&&` / `|` / `;` chains and
`VAR=value` prefixes are taken apart as a shell would. Placeholders (RUN_DIR, outputs/..., my_novel.txt, `...`)
pass: files are not looked at, only the command line."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").rglob("*.md"))]
README_MOST_LINES = 300  # the target for the front page: the rest lives in docs/

SHELL = {"bash", "sh", "shell", "zsh"}  # every line a command
PROMPTED = {"console", "shell-session", "", "text", "txt"}  # `$ ` lines are commands, the rest is output
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
PYTHON = re.compile(r"(^|/)python(3(\.\d+)*)?$")
ENV = re.compile(r"[A-Za-z_]\w*=")
OPERATORS = {"&&", "||", "|", ";", "&"}
PLACEHOLDERS = {"...", "…"}


@dataclass(frozen=True)
class Command:
    """One simple command of the docs: its words as the shell splits them (no VAR= prefix, no operators)."""

    page: str  # relative to the repo
    line: int  # where its line starts
    text: str  # the line as written (continuations joined)
    words: tuple[str, ...]
    error: Optional[str] = None  # the `error: ...` line the docs show it failing with

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def fenced_blocks(text: str) -> Iterator[tuple[str, list[tuple[int, str]]]]:
    """(language, [(line number, line)]) of each fenced block; an indented fence's indent taken off its lines."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = len(m.group(1)), m.group(2), m.group(3).lower()
        body, i = [], i + 1
        while i < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[i]):
            line = lines[i]
            body.append((i + 1, line[indent:] if line[:indent].strip() == "" else line.lstrip()))
            i += 1
        yield lang, body
        i += 1


def joined(body: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Lines with their `\\` continuations joined (a continued prompt line's `> ` taken off)."""
    out: list[tuple[int, str]] = []
    pending: Optional[tuple[int, str]] = None
    for number, line in body:
        if pending is not None:
            number, line = pending[0], pending[1] + " " + re.sub(r"^\s*(> )?", "", line)
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1].rstrip())
            continue
        pending = None
        out.append((number, line))
    if pending is not None:
        out.append(pending)
    return out


def without_comment(line: str) -> str:
    """The line up to a `#` that starts a shell comment (after a space, outside quotes)."""
    quote, i = None, 0
    while i < len(line):
        c = line[i]
        if c == "\\" and quote != "'":
            i += 2  # an escaped character
            continue
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
        i += 1
    return line.rstrip()


def simple_commands(line: str) -> list[list[str]]:
    """A shell line as its simple commands: split at && || | ; &, each without its VAR=value prefixes."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    lexer.commenters = ""
    out: list[list[str]] = [[]]
    for word in lexer:
        if word in OPERATORS:
            out.append([])
        elif word not in PLACEHOLDERS:
            out[-1].append(word)
    for words in out:
        while words and ENV.match(words[0]) and len(words) > 1:
            words.pop(0)
    return [w for w in out if w]


def is_command(words: list[str]) -> bool:
    """A command this test knows how to check (and a plain block's first line must be one to count)."""
    if not words:
        return False
    if words[0] in ("gptlab", "gptlab-train", "pip", "pytest", "mkdocs"):
        return True
    if PYTHON.search(words[0]) and len(words) > 2 and words[1] == "-m":
        return words[2].split(".")[0] in ("gptlab", "pip", "pytest", "mkdocs")
    return PYTHON.search(words[0]) is not None and len(words) > 1 and words[1].startswith("scripts/")


def command_lines(lang: str, body: list[tuple[int, str]]) -> Iterator[tuple[int, str, Optional[str]]]:
    """(line number, command line, the error line shown right after it) of a block's commands."""
    lines = joined(body)
    for k, (number, line) in enumerate(lines):
        prompted = line.startswith("$ ") or line == "$"
        if lang in SHELL:
            text = line[2:] if prompted else line
        elif lang in PROMPTED and prompted:
            text = line[2:]
        elif lang in PROMPTED and k == 0 and not line.startswith(" "):
            try:
                first = simple_commands(without_comment(line))
            except ValueError:
                continue
            if not (first and is_command(first[0])):
                continue
            text = line
        else:
            continue
        text = without_comment(text).strip()
        if not text:
            continue
        after = lines[k + 1][1].strip() if k + 1 < len(lines) else ""
        yield number, text, after if after.startswith("error:") and lang not in SHELL else None


def commands_of(path: Path) -> list[Command]:
    page = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
    out = []
    for lang, body in fenced_blocks(path.read_text(encoding="utf-8")):
        if lang not in SHELL | PROMPTED:
            continue
        for number, text, error in command_lines(lang, body):
            try:
                parts = simple_commands(text)
            except ValueError as e:  # unbalanced quotes: a shell would refuse it too
                parts = [["<unsplittable>", str(e)]] if is_command(text.split()) else []
            ours = [i for i, words in enumerate(parts) if is_command(words) or words[0] == "<unsplittable>"]
            for i in ours:  # the error belongs to the last command of the line (`echo x | gptlab chat ...`)
                out.append(Command(page, number, text, tuple(parts[i]), error if i == ours[-1] else None))
    return out


def all_commands() -> list[Command]:
    return [c for page in PAGES if page.is_file() for c in commands_of(page)]


COMMANDS = all_commands()


def ident(c: Command) -> str:
    head = "-".join(w for w in c.words[:3] if not w.startswith("-") and "=" not in w)[:40]
    same = [d for d in COMMANDS if d.where == c.where]
    return f"{c.where}-{head}" + (f"-{same.index(c)}" if len(same) > 1 else "")


@pytest.fixture(autouse=True)
def _no_hydra_left():
    """Each check sets up Hydra's compose API itself: whatever another test left set up is cleared."""
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


@functools.lru_cache(maxsize=None)
def checked(argv: tuple[str, ...], typed_as: Optional[str]) -> Optional[str]:
    from gptlab.__main__ import check

    return check(list(argv), typed_as)


@functools.lru_cache(maxsize=None)
def extras() -> set[str]:
    """The extras of pyproject.toml (`pip install -e ".[NAME]"`)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the keys of its [project.optional-dependencies] table
        table = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
        return set(re.findall(r"^([A-Za-z][\w-]*)\s*=", table, flags=re.M))
    return set(tomllib.loads(text)["project"]["optional-dependencies"])


def gptlab_argv(words: tuple[str, ...]) -> Optional[tuple[list[str], str]]:
    """(argv of `gptlab`, the command as typed) for the forms that run a gptlab command; None for others."""
    if words[0] == "gptlab":
        return list(words[1:]), f"gptlab {words[1]}" if len(words) > 1 else "gptlab"
    if words[0] == "gptlab-train":
        return ["train", *words[1:]], "python -m gptlab.train"
    if PYTHON.search(words[0]) and len(words) > 2 and words[1] == "-m" and words[2] == "gptlab":
        return list(words[3:]), f"gptlab {words[3]}" if len(words) > 3 else "gptlab"
    if PYTHON.search(words[0]) and len(words) > 2 and words[1] == "-m" and words[2].startswith("gptlab."):
        name = words[2].removeprefix("gptlab.")
        return [name, *words[3:]], f"python -m gptlab.{name}"
    return None


def canonical(argv: list[str], typed_as: Optional[str]) -> tuple[tuple[str, ...], Optional[str]]:
    """The same check for command lines that differ only in the free text of key=TEXT (ckpt_path=RUN_DIR,
    ckpt_path=outputs/sft): any text is taken as typed, so one check of such lines does for all (Hydra's
    composition is the time this file takes)."""
    from gptlab import cli
    from gptlab.__main__ import COMMANDS as NAMES

    if not argv or argv[0] not in NAMES:
        return tuple(argv), typed_as
    importlib.import_module(f"gptlab.{argv[0]}")
    free = cli.COMMAND_LINES[argv[0]].free_text
    return tuple(f"{w.split('=', 1)[0]}=TEXT" if w.split("=", 1)[0] in free else w for w in argv), typed_as


def file_named_in(error: str, words: tuple[str, ...]) -> bool:
    """Whether an error line is about a file the command names that is not here (a run-time error about the
    file's contents, which a check of the command line cannot reproduce)."""
    values = [w.split("=", 1)[1] for w in words if "=" in w]
    return any(("/" in v or "." in v) and v in error and not (REPO / v).exists() for v in values)


def check_gptlab(c: Command, argv: list[str], typed_as: str) -> None:
    from gptlab.__main__ import COMMANDS as NAMES

    if typed_as.startswith("python -m gptlab.") and argv[0] not in NAMES:
        # a module that is no command of the front door (gptlab.harness: lm_eval's own CLI): it runs with -m
        module = f"gptlab.{argv[0]}"
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, f"{c.where}: `{c.text}`: there is no module {module}"
        source = Path(spec.origin).read_text(encoding="utf-8")
        assert '__name__ == "__main__"' in source, f"{c.where}: `{c.text}`: {module} does not run with -m"
        return
    error = checked(*canonical(argv, typed_as if c.error else None))
    if c.error is None:
        assert error is None, f"{c.where}: `{c.text}` does not work as written:\n{error}"
    elif error is None:
        assert file_named_in(c.error, c.words), (
            f"{c.where}: the docs show `{c.text}` failing with\n{c.error}\nbut its command line is accepted "
            "(and the error is not about a file it names)")
    else:
        shown = c.error.removesuffix("...").removesuffix("…").rstrip()
        assert error == c.error or (shown != c.error and error.startswith(shown)), (
            f"{c.where}: the docs show `{c.text}` failing with\n{c.error}\nbut it fails with\n{error}")


def check_script(c: Command) -> None:
    """`python scripts/X.py ...`: the script is there and defines each --flag shown (and each key= it is given);
    overrides after `--` (passed on to the runs it trains) are checked as `gptlab train`'s."""
    script = REPO / c.words[1]
    assert script.is_file(), f"{c.where}: `{c.text}`: there is no {c.words[1]}"
    source = script.read_text(encoding="utf-8")
    words = list(c.words[2:])
    passed_on = words[words.index("--") + 1:] if "--" in words else []
    own = words[:words.index("--")] if "--" in words else words
    for word in own:
        if word.startswith("--"):
            name = word.split("=", 1)[0]
        elif re.match(r"^[A-Za-z_][\w-]*=", word):
            name = word.split("=", 1)[0]
        else:
            continue
        assert f'"{name}"' in source or f"'{name}'" in source, (
            f"{c.where}: `{c.text}`: {c.words[1]} takes no {name}")
    if passed_on:
        error = checked(("train", *passed_on), "gptlab train")
        assert error is None, f"{c.where}: `{c.text}`: the overrides after -- do not work:\n{error}"


def check_pip(c: Command) -> None:
    """pip install -e ".[extra,...]": each extra is one of pyproject.toml's."""
    for word in c.words:
        m = re.fullmatch(r"(?:\.|\./)\[([^\]]*)\]", word)
        if m:
            missing = {e.strip() for e in m.group(1).split(",")} - extras()
            assert not missing, f"{c.where}: `{c.text}`: pyproject.toml has no extra {', '.join(sorted(missing))}"


def check_pytest(c: Command) -> None:
    for word in c.words:
        if word.startswith("tests/"):
            assert (REPO / word.split("::")[0]).exists(), f"{c.where}: `{c.text}`: there is no {word}"


def test_what_is_taken_for_a_command(tmp_path):
    """Commands of shell blocks and prompts of plain blocks; comments, continuations, chains, VAR= prefixes,
    placeholders; output, prose and other languages left alone; the error line shown after a prompt."""
    page = tmp_path / "page.md"
    page.write_text("""Text with `gptlab train` inline is prose.

```bash
gptlab train model=nano \\
    trainer.max_steps=5   # a comment
A=1 B=2 python -m gptlab.generate ckpt_path=RUN --prompt "a # b" && echo done | gptlab chat ckpt_path=RUN
tensorboard --logdir outputs
python scripts/make_tasks.py out=x ...
```

```
$ python -m gptlab.train model.n_layr=4
error: unknown config key model.n_layr
$ gptlab eval ckpt_path=RUN
loss 1.6
gptlab num_proc=1    118.1 s (a table of output, not a command)
```

```
python scripts/bench_prepare.py     # a plain block's first line: a command with its output below
run   seconds
```

```python
gptlab = "not a command"
```

  ```sh
  pip install -e ".[serve]"
  ```
""")
    got = [(c.line, c.words, c.error) for c in commands_of(page)]
    assert got == [
        (4, ("gptlab", "train", "model=nano", "trainer.max_steps=5"), None),
        (6, ("python", "-m", "gptlab.generate", "ckpt_path=RUN", "--prompt", "a # b"), None),
        (6, ("gptlab", "chat", "ckpt_path=RUN"), None),
        (8, ("python", "scripts/make_tasks.py", "out=x"), None),
        (12, ("python", "-m", "gptlab.train", "model.n_layr=4"), "error: unknown config key model.n_layr"),
        (14, ("gptlab", "eval", "ckpt_path=RUN"), None),
        (20, ("python", "scripts/bench_prepare.py"), None),
        (29, ("pip", "install", "-e", ".[serve]"), None),
    ]


def test_the_docs_show_commands():
    """The extraction finds the docs' commands (a change to the fences or the parsing that loses them fails)."""
    gptlab = [c for c in COMMANDS if gptlab_argv(c.words)]
    assert len(gptlab) >= 10, [c.text for c in COMMANDS]
    assert any(c.page == "README.md" for c in gptlab)


@pytest.mark.parametrize("c", COMMANDS, ids=ident)
def test_command_works_as_written(c: Command):
    assert c.words[0] != "<unsplittable>", f"{c.where}: `{c.text}`: a shell cannot split it: {c.words[1]}"
    found = gptlab_argv(c.words)
    if found:
        check_gptlab(c, *found)
    elif PYTHON.search(c.words[0]) and c.words[1].startswith("scripts/"):
        check_script(c)
    elif "pip" in c.words[:3] and "install" in c.words:
        check_pip(c)
    elif "pytest" in c.words[:3]:
        check_pytest(c)
    elif "mkdocs" in c.words[:3]:
        assert (REPO / "mkdocs.yml").is_file(), f"{c.where}: `{c.text}`: there is no mkdocs.yml"


def test_the_checks_catch_mistakes():
    """What the command test relies on: a wrong command line is caught, with the CLI's own line."""
    assert checked(("train", "model.n_layr=4"), "gptlab train") == (
        ("error: unknown config key model.n_layr (did you mean model.n_layer?): check its spelling | "
             "gptlab train --help lists what it takes"))
    assert checked(("train", "model=nonesuch"), "gptlab train").startswith("error: ")
    assert checked(("train", "-m", "optim.lr=1e-3,-1"), "gptlab train") == "error: optim.lr must be > 0, got -1.0"
    assert checked(("generate", "ckpt_path=RUN_DIR", "--promt", "x"), "gptlab generate").startswith("error: ")
    assert checked(("train", "--help", "levers"), "gptlab train").startswith("error: no group 'levers'")
    assert checked(("nonesuch",), None).startswith("error: unknown command")
    assert checked(("plot", "outputs/run", "out=x.png"), "gptlab plot") is None


def test_a_failure_the_docs_show_must_be_the_one_they_show():
    words = ("gptlab", "train", "model.n_layr=4")
    shown = ("error: unknown config key model.n_layr (did you mean model.n_layer?): check its spelling | "
             "gptlab train --help lists what it takes")
    check_gptlab(Command("x.md", 1, " ".join(words), words, shown), list(words[1:]), "gptlab train")
    with pytest.raises(AssertionError, match="but it fails with"):
        check_gptlab(Command("x.md", 1, " ".join(words), words, "error: another"), list(words[1:]), "gptlab train")
    accepted = ("gptlab", "train", "model.n_layer=4")
    with pytest.raises(AssertionError, match="its command line is accepted"):
        check_gptlab(Command("x.md", 1, " ".join(accepted), accepted, shown), list(accepted[1:]), "gptlab train")
    with pytest.raises(AssertionError, match="does not work as written"):
        check_gptlab(Command("x.md", 1, " ".join(words), words), list(words[1:]), "gptlab train")


def test_readme_is_a_front_page_of_at_most_300_lines():
    """THE ISSUE'S TARGET: README.md is the front page (what gptlab is, the first run, where to read on); the rest
    lives in docs/. Fails until the README is cut down to it."""
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MOST_LINES, f"README.md has {lines} lines, at most {README_MOST_LINES}: move the rest on"


def test_site_builds_strict(tmp_path):
    """mkdocs build --strict: a broken link, a missing anchor or a page missing from the nav fails it."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip('mkdocs is not installed: pip install -e ".[docs]"')
    if not (REPO / "mkdocs.yml").is_file():
        pytest.skip("no mkdocs.yml yet")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})  # no banner about MkDocs 2
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}{done.stderr}"
