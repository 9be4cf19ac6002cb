"""scripts/make_tasks.py: the SFT task generator. Answers are recomputed here from the prompt text with
code independent of the generator's; the CLI's error handling runs in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_tasks.py"
LIMIT = 65  # tokens of a char-level model: every character plus two template markers per message


def _load():
    spec = importlib.util.spec_from_file_location("make_tasks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mt = _load()


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return mt.make_splits(seed=0, n=4000, val=0.05, test=0.05)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


# --- independent answers ---------------------------------------------------------------------------------

def _first_arith(prompt: str) -> int:
    if m := re.fullmatch(r"(?:What is )?(\d+) ([+-]) (\d+)(?:\?| = \?)", prompt):
        a, op, b = int(m[1]), m[2], int(m[3])
        return a + b if op == "+" else a - b
    if m := re.fullmatch(r"Add (\d+) and (\d+)\.", prompt):
        return int(m[1]) + int(m[2])
    if m := re.fullmatch(r"Subtract (\d+) from (\d+)\.", prompt):
        return int(m[2]) - int(m[1])
    raise AssertionError(f"not an arithmetic prompt: {prompt!r}")


def _follow(value: int, prompt: str) -> int:
    if "double" in prompt:
        return value * 2
    if m := re.search(r"\badd (\d+)", prompt):
        return value + int(m[1])
    if m := re.search(r"\b(?:subtract|take away) (\d+)", prompt):
        return value - int(m[1])
    raise AssertionError(f"not a follow-up: {prompt!r}")


def _word(prompt: str) -> str:
    """The single lowercase word a word-task prompt is about."""
    m = re.fullmatch(r"(?:Reverse: |Reverse the word |Spell |Sort the letters: |Sort the letters of |"
                     r"Put the letters of |How many letters in |Count the letters in |Length of the word )"
                     r"([a-z]+)(?: backwards\.| in order\.|\.|\?)?", prompt)
    assert m, prompt
    return m[1]


def _after_colon(prompt: str) -> str:
    head, sep, text = prompt.partition(": ")
    assert sep and text, prompt
    return text


def _expected_answers(conv: dict) -> list[str]:
    """What each assistant turn must say, worked out from the user turns alone."""
    task, users = conv["task"], [m["content"] for m in conv["messages"][0::2]]
    p = users[0]
    if task in ("add", "sub"):
        return [str(_first_arith(p))]
    if task == "followup":
        values = [_first_arith(p)]
        for follow in users[1:]:
            values.append(_follow(values[-1], follow))
        return [str(v) for v in values]
    if task == "reverse":
        w = _word(p)
        return ["".join(w[i] for i in range(len(w) - 1, -1, -1))]
    if task == "sort":
        letters = list(_word(p))
        for i in range(len(letters)):  # insertion sort, not sorted()
            j = i
            while j > 0 and letters[j - 1] > letters[j]:
                letters[j - 1], letters[j] = letters[j], letters[j - 1]
                j -= 1
        return ["".join(letters)]
    if task == "count_chars":
        return [str(len(_word(p)))]
    if task == "count_letter":
        m = re.fullmatch(r"(?:How many ([a-z])'s in|Count the letter ([a-z]) in|How many times does ([a-z]) occur in) "
                         r"([a-z]+)[.?]", p)
        assert m, p
        c = m[1] or m[2] or m[3]
        return [str(sum(ch == c for ch in m[4]))]
    if task == "count_words":
        return [str(len([w for w in _after_colon(p).split(" ") if w]))]
    text = _after_colon(p)
    if task == "upper":
        return ["".join(chr(ord(ch) - 32) if "a" <= ch <= "z" else ch for ch in text)]
    if task == "lower":
        return ["".join(chr(ord(ch) + 32) if "A" <= ch <= "Z" else ch for ch in text)]
    if task == "title":
        return [" ".join(w[0].upper() + w[1:].lower() for w in text.split(" "))]
    raise AssertionError(f"unknown task {task!r}")


# --- tests -----------------------------------------------------------------------------------------------

def test_every_answer_is_correct(splits):
    convs = [c for s in mt.SPLITS for c in splits[s]]
    assert {c["task"] for c in convs} == set(mt.TASKS)  # every task is represented (multi-turn included)
    assert sum(len(c["messages"]) > 2 for c in convs) > 300
    for conv in convs:
        got = [m["content"] for m in conv["messages"][1::2]]
        assert got == _expected_answers(conv), conv


def test_shape_and_length(splits):
    for conv in (c for s in mt.SPLITS for c in splits[s]):
        msgs = conv["messages"]
        assert 2 <= len(msgs) <= 6 and len(msgs) % 2 == 0, conv
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        assert all(isinstance(m["content"], str) and m["content"].strip() == m["content"] != "" for m in msgs)
        assert all(m["content"].isascii() for m in msgs)
        assert sum(len(m["content"]) + 2 for m in msgs) <= LIMIT, conv


def test_split_sizes_and_no_eval_prompt_in_train(splits):
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3600, 200, 200]
    keys = {s: [(c["task"], *(m["content"] for m in c["messages"][0::2])) for c in splits[s]] for s in splits}
    assert len(set(keys["test"])) == len(keys["test"]) and len(set(keys["val"])) == len(keys["val"])
    assert not set(keys["test"]) & set(keys["train"])
    assert not set(keys["val"]) & set(keys["train"])
    assert not set(keys["val"]) & set(keys["test"])


def test_vocabulary():
    assert 200 <= len(mt.VOCAB) == len(set(mt.VOCAB))
    assert all(re.fullmatch(r"[a-z]{3,8}", w) for w in mt.VOCAB)


def test_cli_is_deterministic(tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert mt.main([f"out={a}", "n=1500", "seed=3"]) == 0
    assert mt.main(["--out", str(b), "--n=1500", "--seed", "3"]) == 0  # flag style, same settings
    assert mt.main([f"out={c}", "n=1500", "seed=4"]) == 0
    printed = capsys.readouterr().out
    assert "followup" in printed and "total" in printed
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()
    lines = (a / "train.jsonl").read_text().splitlines()
    assert len(lines) == 1350 and set(json.loads(lines[0])) >= {"messages"}
    assert sorted(p.name for p in a.iterdir()) == ["test.jsonl", "train.jsonl", "val.jsonl"]  # no temp files left
    assert mt.main([f"out={a}", "n=1500", "seed=3"]) == 0  # the same files again: fine


@pytest.mark.parametrize("args", [["colour=red"], ["n=lots"], ["val=1.5"], ["--seed"], ["seed=1"]])
def test_cli_bad_input_writes_nothing(tmp_path, args):
    out = tmp_path / "out"
    proc = _run_cli(*([f"out={out}"] if args != ["seed=1"] else []), *args)  # the last one lacks out=
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert not out.exists()


def test_cli_keeps_a_different_folder_unless_forced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text("old\n")
    proc = _run_cli(f"out={out}", "n=200")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["train.jsonl"]
    assert (out / "train.jsonl").read_text() == "old\n"
    proc = _run_cli(f"out={out}", "n=200", "force=true")
    assert proc.returncode == 0, proc.stderr
    assert len((out / "train.jsonl").read_text().splitlines()) == 180
    umask = os.umask(0)
    os.umask(umask)
    assert all((out / f"{s}.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask for s in mt.SPLITS)  # not private
