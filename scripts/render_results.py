"""Render the pages' results blocks from results/*.json: no figure typed by hand, each saying where it came from.

A block in README.md or docs/**/*.md is

    <!-- results: BENCH[:KEY] [run: COMMAND] -->
    (anything: replaced)
    <!-- /results -->

and its content becomes, for each machine kind with a record of BENCH (of BENCH:KEY with a key; without one,
every key of the bench), in order of kind and key: a provenance line in italics (the machine, torch, the date,
the exact command), the table the bench printed, and its last line. A bench that no machine has run yet says
so, with the command to run (COMMAND where the marker gives one, else `python scripts/bench_BENCH.py`).

    python scripts/render_results.py            # rewrite the pages in place
    python scripts/render_results.py --check    # exit 1 naming each page out of date (the test suite runs it)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import REPO, load, results_dir  # noqa: E402

OPEN = re.compile(r"^\s*<!--\s*results:\s*(?P<spec>\S+)(?:\s+run:\s*(?P<run>.*?))?\s*-->\s*$")
CLOSE = re.compile(r"^\s*<!--\s*/results\s*-->\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def records(folder: Path) -> list[dict]:
    """Every record of every results/*.json, sorted by machine kind, then bench and key."""
    found = []
    for path in sorted(folder.glob("*.json")):
        for rec in load(path).get("records", {}).values():
            found.append({**rec, "kind": path.stem})
    return sorted(found, key=lambda r: (r["kind"], r["bench"], r["key"] or ""))


def code(text: str) -> str:
    """text as an inline code span (a backtick inside it needs a longer fence)."""
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def table(columns: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(columns), "|" + "---|" * len(columns), *(line(r) for r in rows)]


def render_record(rec: dict) -> list[str]:
    m = rec["machine"]
    torch = f"torch {m['torch']}" + (f", {rec['notes']}" if rec.get("notes") else "")
    lines = [f"*{m['description']}; {torch}; {rec['date'][:10]}: {code(rec['command'])}*", ""]
    lines += table(rec["columns"], rec["rows"])
    last = rec["last_line"].strip().splitlines()
    if last:
        lines += ["", ("Last line: " if len(last) == 1 else "Last lines: ") + ", ".join(code(s) for s in last)]
    return lines


def render_block(spec: str, found: list[dict], run: Optional[str] = None) -> list[str]:
    """The lines of one block: each matching record, or the line saying none has been measured."""
    bench, _, key = spec.partition(":")
    chosen = [r for r in found if r["bench"] == bench and (not key or r["key"] == key)]
    if not chosen:
        if not run and not (REPO / "scripts" / f"bench_{bench}.py").is_file():  # a typo, or a bench renamed
            raise ValueError(f"no record of `{bench}` and no scripts/bench_{bench}.py to make one")
        how = run or f"python scripts/bench_{bench}.py"
        which = f" (its record `{spec}`)" if key and not run else ""
        return [f"*Not yet measured on any machine: run {code(how)}{which}.*"]
    lines: list[str] = []
    for rec in chosen:
        lines += [*([""] if lines else []), *render_record(rec)]
    return lines


def render(text: str, found: list[dict], name: str = "page") -> str:
    """text with every results block's content rendered; everything outside the blocks as it was."""
    lines = text.splitlines(keepends=True)
    out, i, fenced = [], 0, False
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if FENCE.match(line):  # a marker shown inside a code block is an example, not a block
            fenced = not fenced
        m = None if fenced else OPEN.match(line)
        if not m:
            continue
        end = next((j for j in range(i, len(lines)) if CLOSE.match(lines[j]) or OPEN.match(lines[j])), None)
        if end is None or not CLOSE.match(lines[end]):
            raise SystemExit(f"error: {name}:{i}: `{line.strip()}` has no `<!-- /results -->` after it")
        newline = "\r\n" if line.endswith("\r\n") else "\n"
        # blank lines around the content: Markdown ends an HTML comment's block at a blank line
        try:
            body = ["", *render_block(m["spec"], found, m["run"]), ""]
        except ValueError as e:
            raise SystemExit(f"error: {name}:{i}: {e}") from None
        out += [s + newline for s in body]
        i = end
    return "".join(out)


def pages(root: Path) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("**/*.md"))] if p.is_file()]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is out of date")
    ap.add_argument("--root", type=Path, default=REPO, help="where README.md and docs/ are (default: this repo)")
    ap.add_argument("--results", type=Path, default=None,
                    help="the results folder (default: $GPTLAB_RESULTS_DIR, else results/ of this repo)")
    args = ap.parse_args(argv)
    found = records(args.results or results_dir())
    stale = []
    for page in pages(args.root):
        with open(page, encoding="utf-8", newline="") as f:  # newline="": line endings kept as they are
            text = f.read()
        new = render(text, found, str(page))
        if new != text:
            stale.append(page)
            if not args.check:
                with open(page, "w", encoding="utf-8", newline="") as f:
                    f.write(new)
    shown = [str(p.relative_to(args.root)) if p.is_relative_to(args.root) else str(p) for p in stale]
    if args.check:
        for s in shown:
            print(f"{s}: its results blocks are out of date: run python scripts/render_results.py")
        return 1 if stale else 0
    for s in shown:
        print(f"rendered {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
