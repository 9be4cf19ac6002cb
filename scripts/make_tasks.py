#!/usr/bin/env python
"""Generate a small instruction-following data set for supervised fine-tuning demos (standard library, and gptlab's atomic writer).

    python scripts/make_tasks.py out=data/tasks [seed=0] [n=50000] [val=0.05] [test=0.05] [force=false]
    python scripts/make_tasks.py --out data/tasks --seed 1          # the same keys as flags

Writes train.jsonl, val.jsonl and test.jsonl into `out`, one conversation a line:

    {"task": "add", "messages": [{"role": "user", "content": "What is 37 + 45?"},
                                 {"role": "assistant", "content": "82"}]}

The conversations are short (at most MAX_TOKENS tokens for a char-level model, see `conversation_length`)
so that a tiny char-level model with a context of 64 (experiment=shakespeare_cpu's) sees a whole one, and each answer depends on the
prompt: arithmetic, reversing or sorting a word, counting, changing case, and multi-turn arithmetic
follow-ups ("and now add 3"). Words come from the fixed VOCAB below (ASCII lowercase, 3-8 letters).

Splits: test and val hold distinct (task, prompt) pairs, none of which appears in train (train is drawn
with those prompts excluded; it may repeat its own prompts, as the word tasks have only a few thousand).
Everything follows from the seed: the same arguments give the same files byte for byte.
Bad arguments print one line `error: ...` to stderr and exit 2 before anything is written; an existing
non-empty `out` whose files differ from what would be written is left alone unless force=true.

Importable: `generate(seed, n)`, `make_splits(seed, n, val, test)`, `prompt_key(conv)`,
`conversation_length(conv)`, `write_splits(out, splits)`, `main(argv)`.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Callable

from gptlab.files import atomic_write

Conversation = dict  # {"task": str, "messages": [{"role": "user"|"assistant", "content": str}, ...]}

MAX_OPERAND = 49  # arithmetic on numbers 0..49: a 0.8M-parameter model learns it in minutes
MAX_STEP = 9  # a follow-up adds or subtracts 1..9; "double it" comes only while the number is <= MAX_OPERAND
MAX_TOKENS = 65  # the longest conversation allowed, as measured by conversation_length: fits a context of 64
SPLITS = ("train", "val", "test")

# A few hundred common words: lowercase ASCII, 3-8 letters (checked below).
VOCAB: tuple[str, ...] = tuple(dict.fromkeys("""
    cat dog fox owl bat bee ant cow pig hen rat yak elk emu ape eel cod hawk crow duck goat frog bear wolf
    deer lion seal mole swan crab moth wasp lamb mouse horse sheep tiger zebra camel eagle goose otter panda
    robin shark snake whale rabbit monkey donkey turtle parrot beaver badger falcon pigeon spider kitten
    puppy dragon
    pie jam tea egg bun fig pea nut oat rice soup cake bread honey apple lemon mango melon peach grape onion
    pepper carrot butter cheese cookie muffin pasta salad sugar flour cream olive bean corn plum pear lime
    kiwi toast candy
    sun sky sea air ice fog dew mud hill lake pond river ocean beach stone rock sand leaf tree wood rain snow
    wind storm cloud star moon earth field grass flower rose forest island valley desert meadow garden
    planet comet thunder shadow spring summer autumn winter
    cup mug pan pot bed box key map pen ink bag hat cap cot door wall roof room lamp desk sofa chair table
    clock spoon fork knife plate bowl glass bottle basket candle mirror pillow blanket window carpet ladder
    hammer needle button pocket jacket shirt dress scarf glove boot shoe sock ring coin wallet letter paper
    pencil book page story poem song drum flute piano violin guitar ticket
    town city road path gate bridge tower castle church market school office farm barn mill ship boat train
    plane truck wagon bike car bus rocket engine wheel anchor sail harbor station palace temple cabin tent
    king queen prince knight farmer sailor doctor teacher baker pilot nurse singer painter friend mother
    father sister brother uncle child baby
    red blue green black white brown pink gold silver gray orange purple happy sad quick slow warm cold hot
    soft hard loud quiet bright dark sweet sour fresh clean empty full heavy light little small large tiny
    giant young old new brave calm kind proud wise wild gentle strong clever lucky funny busy lazy shiny
    rough smooth simple
    run jump walk swim sing read write draw paint cook bake play dance climb build open close carry catch
    throw push pull sleep dream laugh smile think learn teach help find keep give take make send bring
    listen follow travel wander whisper
    time day night week year hour minute morning evening today name word idea game puzzle secret magic
    music color number circle square line point answer question lesson
""".split()))
assert all(w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 8 for w in VOCAB)

LETTERS = "abcdefghijklmnopqrstuvwxyz"

# Prompt templates: 3 phrasings per task, so the model must read the request, not guess it.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "add": ("What is {a} + {b}?", "{a} + {b} = ?", "Add {a} and {b}."),
    "sub": ("What is {a} - {b}?", "{a} - {b} = ?", "Subtract {b} from {a}."),
    "reverse": ("Reverse: {w}", "Reverse the word {w}.", "Spell {w} backwards."),
    "sort": ("Sort the letters: {w}", "Sort the letters of {w}.", "Put the letters of {w} in order."),
    "count_letter": ("How many {c}'s in {w}?", "Count the letter {c} in {w}.", "How many times does {c} occur in {w}?"),
    "count_chars": ("How many letters in {w}?", "Count the letters in {w}.", "Length of the word {w}?"),
    "count_words": ("How many words: {p}", "Count the words: {p}", "Number of words in: {p}"),
    "upper": ("Uppercase: {p}", "To upper case: {p}", "Make upper case: {p}"),
    "lower": ("Lowercase: {p}", "To lower case: {p}", "Make lower case: {p}"),
    "title": ("Title case: {p}", "To title case: {p}", "Capitalize each word: {p}"),
}
FOLLOW_UPS: dict[str, tuple[str, ...]] = {  # the multi-turn task's later user turns
    "add": ("and now add {k}", "now add {k}", "add {k} more"),
    "sub": ("now subtract {k}", "and now subtract {k}", "take away {k}"),
    "double": ("double it", "now double it", "and now double it"),
}

# The task mix: relative weights of the tasks drawn for each conversation.
TASK_WEIGHTS: dict[str, float] = {  # the tasks a small model learns last get the most examples
    "add": 8, "sub": 8, "reverse": 9, "sort": 9, "count_letter": 14, "count_chars": 4, "count_words": 8,
    "upper": 4, "lower": 4, "title": 4, "followup": 28,
}
TASKS = tuple(TASK_WEIGHTS)


def _chat(task: str, *turns: str) -> Conversation:
    """A conversation from alternating user / assistant contents."""
    roles = ("user", "assistant")
    return {"task": task, "messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]}


def _phrase(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(rng.randint(lo, hi)))


def _mixed_case(rng: random.Random, text: str) -> str:
    """Each letter upper-cased with probability 1/2, redrawn until the text is not all lowercase."""
    while True:
        out = "".join(ch.upper() if rng.random() < 0.5 else ch for ch in text)
        if out != text:
            return out


def _title(text: str) -> str:
    return " ".join(w[:1].upper() + w[1:].lower() for w in text.split(" "))


# --- one generator per task: rng -> conversation ---------------------------------------------------------

def _arith(rng: random.Random, op: str) -> tuple[str, int]:
    """A first arithmetic question and its answer; subtraction keeps the result non-negative."""
    a, b = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)
    if op == "sub" and b > a:
        a, b = b, a
    prompt = rng.choice(TEMPLATES[op]).format(a=a, b=b)
    return prompt, a + b if op == "add" else a - b


def _add(rng: random.Random) -> Conversation:
    prompt, value = _arith(rng, "add")
    return _chat("add", prompt, str(value))


def _sub(rng: random.Random) -> Conversation:
    prompt, value = _arith(rng, "sub")
    return _chat("sub", prompt, str(value))


def _word_task(task: str, answer: Callable[[str], str]) -> Callable[[random.Random], Conversation]:
    def make(rng: random.Random) -> Conversation:
        w = rng.choice(VOCAB)
        return _chat(task, rng.choice(TEMPLATES[task]).format(w=w), answer(w))
    return make


def _count_letter(rng: random.Random) -> Conversation:
    w = rng.choice(VOCAB)
    if rng.random() < 0.8:  # mostly a letter of the word; sometimes one it lacks (answer 0)
        c = rng.choice(w)
    else:
        c = rng.choice([ch for ch in LETTERS if ch not in w])
    return _chat("count_letter", rng.choice(TEMPLATES["count_letter"]).format(c=c, w=w), str(w.count(c)))


def _count_words(rng: random.Random) -> Conversation:
    p = _phrase(rng, 2, 7)
    return _chat("count_words", rng.choice(TEMPLATES["count_words"]).format(p=p), str(len(p.split())))


def _upper(rng: random.Random) -> Conversation:
    p = _phrase(rng, 1, 3)
    shown = _mixed_case(rng, p) if rng.random() < 0.3 else p
    return _chat("upper", rng.choice(TEMPLATES["upper"]).format(p=shown), p.upper())


def _lower(rng: random.Random) -> Conversation:
    p = _phrase(rng, 1, 3)
    shown = rng.choice((p.upper(), _title(p), _mixed_case(rng, p)))
    return _chat("lower", rng.choice(TEMPLATES["lower"]).format(p=shown), p)


def _title_task(rng: random.Random) -> Conversation:
    p = _phrase(rng, 1, 3)
    return _chat("title", rng.choice(TEMPLATES["title"]).format(p=p), _title(p))


def _followup(rng: random.Random) -> Conversation:
    """An arithmetic question, then 1 or 2 follow-ups on the running result (2-3 user turns)."""
    prompt, value = _arith(rng, rng.choice(("add", "sub")))
    turns = [prompt, str(value)]
    for _ in range(rng.randint(1, 2)):
        ops = ["add"] + (["double"] if value <= MAX_OPERAND else []) + (["sub"] if value > 0 else [])
        op = rng.choice(ops)
        if op == "add":
            k = rng.randint(1, MAX_STEP)
            value += k
        elif op == "sub":
            k = rng.randint(1, min(MAX_STEP, value))
            value -= k
        else:
            k = 0
            value *= 2
        turns += [rng.choice(FOLLOW_UPS[op]).format(k=k), str(value)]
    return _chat("followup", *turns)


MAKERS: dict[str, Callable[[random.Random], Conversation]] = {
    "add": _add,
    "sub": _sub,
    "reverse": _word_task("reverse", lambda w: w[::-1]),
    "sort": _word_task("sort", lambda w: "".join(sorted(w))),
    "count_letter": _count_letter,
    "count_chars": _word_task("count_chars", lambda w: str(len(w))),
    "count_words": _count_words,
    "upper": _upper,
    "lower": _lower,
    "title": _title_task,
    "followup": _followup,
}
assert set(MAKERS) == set(TASKS)


# --- data set ----------------------------------------------------------------------------------------------

def prompt_key(conv: Conversation) -> tuple[str, ...]:
    """(task, user turns...): two conversations with the same key ask the same thing."""
    return (conv["task"], *(m["content"] for m in conv["messages"] if m["role"] == "user"))


def conversation_length(conv: Conversation) -> int:
    """Its length in tokens for a char-level model under gptlab's chat template: every character, and two
    markers per message (its role, and the end of the turn)."""
    return sum(len(m["content"]) + 2 for m in conv["messages"])


def _draw(rng: random.Random, n: int, exclude: set[tuple[str, ...]], unique: bool) -> list[Conversation]:
    """n conversations whose keys are not in `exclude`; with unique=True, no key twice (and the keys drawn
    are added to `exclude`). Gives up with ValueError when the tasks run out of fresh prompts."""
    weights = [TASK_WEIGHTS[t] for t in TASKS]
    out: list[Conversation] = []
    misses = 0
    while len(out) < n:
        conv = MAKERS[rng.choices(TASKS, weights)[0]](rng)
        if conversation_length(conv) > MAX_TOKENS:  # too long for the context: drawn again
            continue
        key = prompt_key(conv)
        if key in exclude:
            misses += 1
            if misses > 10_000:
                raise ValueError(f"ran out of distinct prompts after {len(out)} of {n} conversations: ask for fewer")
            continue
        misses = 0
        if unique:
            exclude.add(key)
        out.append(conv)
    return out


def generate(seed: int, n: int, *, unique: bool = False) -> list[Conversation]:
    """n conversations drawn from the task mix with random.Random(seed); unique=True: distinct prompts."""
    return _draw(random.Random(seed), n, set(), unique)


def split_sizes(n: int, val: float, test: float) -> dict[str, int]:
    n_val, n_test = round(n * val), round(n * test)
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def make_splits(seed: int, n: int, val: float = 0.05, test: float = 0.05) -> dict[str, list[Conversation]]:
    """train / val / test with n conversations in all. test, then val, are drawn first with distinct
    prompts; train is drawn with those prompts excluded, so no eval prompt is seen in training."""
    sizes = split_sizes(n, val, test)
    rng = random.Random(seed)
    held_out: set[tuple[str, ...]] = set()
    test_set = _draw(rng, sizes["test"], held_out, unique=True)
    val_set = _draw(rng, sizes["val"], held_out, unique=True)
    train_set = _draw(rng, sizes["train"], held_out, unique=False)
    return {"train": train_set, "val": val_set, "test": test_set}


def to_jsonl(convs: list[Conversation]) -> bytes:
    return "".join(json.dumps(c, ensure_ascii=True) + "\n" for c in convs).encode("ascii")


def write_splits(out: Path, payloads: dict[str, bytes]) -> None:
    """Write each split atomically (gptlab.files.atomic_write: a temporary file beside it, then a rename)."""
    for name, data in payloads.items():
        atomic_write(out / f"{name}.jsonl", lambda f, data=data: f.write(data))


# --- command line ------------------------------------------------------------------------------------------

class UsageError(Exception):
    pass


DEFAULTS: dict[str, str] = {"out": "", "seed": "0", "n": "50000", "val": "0.05", "test": "0.05", "force": "false"}


def parse_args(argv: list[str]) -> dict[str, str]:
    """`key=value`, `--key value` or `--key=value`; every key at most once, all known."""
    given: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"--{key} needs a value")
                value, i = argv[i + 1], i + 1
        else:
            key, eq, value = arg.partition("=")
            if not eq:
                raise UsageError(f"expected key=value, got {arg!r}")
        if key not in DEFAULTS:
            raise UsageError(f"unknown key {key!r} (known: {', '.join(DEFAULTS)})")
        if key in given:
            raise UsageError(f"{key} given twice")
        given[key] = value
        i += 1
    return {**DEFAULTS, **given}


def _int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{key} must be an integer, got {value!r}") from None


def _fraction(key: str, value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise UsageError(f"{key} must be a number, got {value!r}") from None
    if not 0 <= x < 1:
        raise UsageError(f"{key} must be in [0, 1), got {value!r}")
    return x


def _bool(key: str, value: str) -> bool:
    v = value.lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise UsageError(f"{key} must be true or false, got {value!r}")


def _check_out(out: Path, payloads: dict[str, bytes], force: bool) -> None:
    """Refuse an existing non-empty folder unless it holds only these files with these bytes (or force)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"out={out} exists and is not a folder")
    if force or not out.is_dir():
        return
    ours = {f"{name}.jsonl": data for name, data in payloads.items()}
    for entry in sorted(out.iterdir()):
        if entry.name not in ours or not entry.is_file() or entry.read_bytes() != ours[entry.name]:
            raise UsageError(f"out={out} is not empty and holds other files ({entry.name}); pass force=true to write there")


def report(splits: dict[str, list[Conversation]]) -> str:
    """Counts per task and split, and the longest conversation."""
    lines = [f"{'task':<14}" + "".join(f"{s:>8}" for s in SPLITS)]
    for task in TASKS:
        lines.append(f"{task:<14}" + "".join(f"{sum(c['task'] == task for c in splits[s]):>8}" for s in SPLITS))
    lines.append(f"{'total':<14}" + "".join(f"{len(splits[s]):>8}" for s in SPLITS))
    longest = max((conversation_length(c) for s in SPLITS for c in splits[s]), default=0)
    lines.append(f"longest conversation: {longest} tokens for a char-level model (limit {MAX_TOKENS})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.split("\n\n")[1])
        return 0
    try:
        args = parse_args(argv)
        if not args["out"]:
            raise UsageError("out=DIR is required")
        out = Path(args["out"])
        seed, n = _int("seed", args["seed"]), _int("n", args["n"])
        val, test = _fraction("val", args["val"]), _fraction("test", args["test"])
        force = _bool("force", args["force"])
        if n < 1:
            raise UsageError(f"n must be at least 1, got {n}")
        if split_sizes(n, val, test)["train"] < 1:
            raise UsageError(f"val + test leave no training conversations (n={n}, val={val}, test={test})")
        try:
            splits = make_splits(seed, n, val, test)
        except ValueError as e:
            raise UsageError(str(e)) from None
        payloads = {name: to_jsonl(splits[name]) for name in SPLITS}
        _check_out(out, payloads, force)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_splits(out, payloads)
    print(f"wrote {out}/{{train,val,test}}.jsonl (seed={seed}, n={n}, val={val}, test={test})")
    print(report(splits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
