"""Conversations for supervised fine-tuning (`data=chat`): JSONL files -> rendered, masked token rows -> padded batches.

A line is one conversation, `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`, or
Alpaca's `{"instruction": ..., "input": ..., "output": ...}` (one user turn, the instruction and its input,
then the output as the assistant's answer). Other keys (an id, a task label) are ignored. Every problem is
one line naming the file and line.

Each conversation becomes one row: its ids from the chat template (`gptlab.tokenizers.chat.render`) and the
targets, which are the next ids where the template's loss mask says so and -1 (ignored) everywhere else. Rows
are padded per batch to the longest one in it (training batches group conversations of like length);
padding comes after a conversation's last token, so causal attention never lets a real token see it, and
its targets are -1.

ChatDataModule (data/datamodule.py) serves these in training; nothing here imports Lightning, so gptlab eval
reads and scores conversations without it.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from gptlab.data.sources import DataError
from gptlab.data.windows import BatchStream
from gptlab.model.chat import fit, room
from gptlab.tokenizers import Tokenizer, TokenizerError, train_tokenizer
from gptlab.tokenizers.chat import ROLES, Message, chat_tokenizer, render

SPLIT_FILES = ("train.jsonl", "val.jsonl")  # a folder holding these is split by them (test.jsonl is left for eval)


@dataclass
class Conversation:
    messages: list[Message]
    where: str  # "file:line", for messages about it
    task: Optional[str] = None  # a "task" label the line may carry: eval reports accuracy per task


# --- reading -----------------------------------------------------------------------------------------------

def read_conversations(path: Union[str, Path]) -> list[Conversation]:
    """Every conversation of a .jsonl file, or of the .jsonl files below a folder (sorted by path)."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.jsonl") if f.is_file())
        if not files:
            raise DataError(f"{p} holds no .jsonl files: data=chat reads conversations, one JSON object a line")
    elif p.is_file():
        files = [p]
    else:
        raise DataError(f"data.path={path} does not exist: give a .jsonl file of conversations or a folder of them")
    return [c for f in files for c in read_file(f)]  # read_file refuses an empty file


def read_file(path: Path) -> list[Conversation]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                where = f"{path}:{n}"
                messages, task = parse_line(line, where)
                out.append(Conversation(messages, where, task))
    if not out:
        raise DataError(f"{path} is empty: write one conversation a line, "
                        '{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}')
    return out


def parse_line(line: str, where: str) -> tuple[list[Message], Optional[str]]:
    """The messages of one JSONL line (either form) and its "task" label if any; a DataError naming `where`
    for anything wrong."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg}, column {e.colno}): each line must be one JSON object") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: a line must be a JSON object with \"messages\" (or Alpaca's \"instruction\" "
                        f"and \"output\"), got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} objects")
        for k, m in enumerate(messages, 1):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: message {k} must be an object with a \"role\" and a string \"content\"")
            if m.get("role") not in ROLES:
                raise DataError(f"{where}: message {k} has the unknown role {m.get('role')!r}: "
                                f"use {', '.join(ROLES)}")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    elif "instruction" in record or "output" in record:
        fields = {k: record.get(k, "") for k in ("instruction", "input", "output")}
        bad = [k for k, v in fields.items() if not isinstance(v, str)]
        if bad:
            raise DataError(f"{where}: Alpaca's \"{bad[0]}\" must be a string")
        if not fields["instruction"]:
            raise DataError(f"{where}: the Alpaca record has no \"instruction\"")
        user = fields["instruction"] + (f"\n\n{fields['input']}" if fields["input"] else "")
        messages = [{"role": "user", "content": user}]
        if fields["output"]:
            messages.append({"role": "assistant", "content": fields["output"]})
    else:
        raise DataError(f"{where}: no \"messages\" (nor Alpaca's \"instruction\"/\"output\"); keys: "
                        f"{', '.join(sorted(record)) or 'none'}")
    if not any(m["role"] == "assistant" and m["content"] for m in messages):
        raise DataError(f"{where}: the conversation has no assistant message with content: nothing to learn from it")
    task = record.get("task")
    return messages, task if isinstance(task, str) else None  # type: ignore[return-value]


def split(path: Union[str, Path], val_fraction: float) -> tuple[list[Conversation], list[Conversation], str]:
    """(train, val, how). A folder with train.jsonl reads that for training (never its test.jsonl) and
    val.jsonl, if there, for validation; otherwise every k-th conversation (k = 1/val_fraction) goes to val.
    Either way a conversation is whole in one split."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / SPLIT_FILES[0]).is_file():
        convs = read_file(p / SPLIT_FILES[0])
        if (p / SPLIT_FILES[1]).is_file():
            return convs, read_file(p / SPLIT_FILES[1]), "train.jsonl / val.jsonl"
    else:
        convs = read_conversations(p)
    k = max(2, round(1 / val_fraction))
    val = convs[k - 1 :: k]
    if not val:
        raise DataError(f"{p} has {len(convs)} conversation(s): too few for a validation split of every "
                        f"{k}th; add more, or give a folder with train.jsonl and val.jsonl")
    train = [c for i, c in enumerate(convs) if i % k != k - 1]
    return train, val, f"every {k}th conversation to val"


@dataclass
class Question:
    """An answer of the data, to be given again: the conversation before it, rendered as the prompt a chat would
    give (`model.chat.fit`), and the data's answer as the reference. What eval's exact match and RL judge."""

    prompt: list[int]  # ids ending in <|assistant|>
    messages: list[Message]  # the conversation before the answer, as the data has it
    reference: str  # the data's answer
    budget: int  # the data's answer and <|end|>: the most tokens a right answer takes
    conversation: int  # the index of its conversation
    task: Optional[str] = None
    where: str = ""


def questions(tokenizer: Tokenizer, convs: Sequence[Conversation], block_size: int) -> list[Question]:
    """Every assistant turn but an opening one, with the conversation before it, kept to the room an answer as long
    as the data's (and its <|end|>) needs: the budget exact match gives it (a longer answer is wrong anyway)."""
    out = []
    for n, c in enumerate(convs):
        for k, m in enumerate(c.messages):
            if m["role"] == "assistant" and k > 0:
                budget = len(tokenizer.encode(m["content"])) + 1
                ids, _ = fit(tokenizer, c.messages[:k], room(block_size, budget))  # the oldest turns go, as in a chat
                out.append(Question(ids, list(c.messages[:k]), m["content"], budget, n, c.task, c.where))
    return out


def check_room(questions: Sequence[Question], block_size: int) -> None:
    """Every prompt leaves the context room for an answer; else one line naming the first that does not."""
    for q in questions:
        if len(q.prompt) >= block_size:
            raise DataError(f"{q.where}: a prompt takes {len(q.prompt)} tokens and the context holds {block_size}, "
                            "leaving no room for its answer: shorten it, or raise model.block_size")


# --- tokens ------------------------------------------------------------------------------------------------

def chat_vocabulary(spec: Union[dict, Tokenizer], convs: Sequence[Conversation]) -> Tokenizer:
    """The tokenizer for these conversations: a new one trained on their text (spec: settings), or a trained
    one (a checkpoint's) grown by the characters it lacks (char) and, either way, the template's markers."""
    text = "\n".join(m["content"] for c in convs for m in c.messages)
    if isinstance(spec, Tokenizer):
        return chat_tokenizer(spec.with_chars(text))
    settings = {k: v for k, v in spec.items() if k != "kind"}
    return chat_tokenizer(train_tokenizer(spec["kind"], text, **settings))


@dataclass
class Rows:
    """Rendered conversations: ids and loss masks, one row each; how many were cut or left out."""

    ids: list[np.ndarray]
    masks: list[np.ndarray]
    truncated: int = 0
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def longest(self) -> int:
        return max(len(ids) for ids in self.ids)

    @property
    def targets(self) -> int:
        return int(sum(m[1:].sum() for m in self.masks))


def encode(tokenizer: Tokenizer, convs: Sequence[Conversation], max_len: int, overflow: str,
           loss_on: str = "answers") -> Rows:
    """Render each conversation; one longer than max_len tokens is cut to max_len (overflow="truncate", left
    out if no answer token is left in it) or left out ("drop"). loss_on="all": every token is a target (the
    ablation that shows what the mask is for)."""
    rows = Rows([], [])
    for c in convs:
        try:
            ids, mask = render(tokenizer, c.messages)
        except TokenizerError as e:
            raise DataError(f"{c.where}: {e}") from None
        if loss_on == "all":
            mask = [True] * len(ids)
        if len(ids) > max_len:
            if overflow == "drop" or not any(mask[1:max_len]):
                rows.dropped += 1
                continue
            ids, mask = ids[:max_len], mask[:max_len]
            rows.truncated += 1
        rows.ids.append(np.asarray(ids, dtype=np.int64))
        rows.masks.append(np.asarray(mask, dtype=bool))
    return rows


PAD_TO = 8  # batches are padded to a multiple of 8 tokens: a CPU's matmul kernels, built for each shape, are reused


def pad(rows: Rows, which: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows `which` as a batch padded to the longest, rounded up to a multiple of PAD_TO (never past the longest row
    of all): x (B, T) the inputs, y (B, T) the targets (-1: no loss). Each new width costs oneDNN a new kernel, and
    its cache holds too few for every width of every matrix: rounded, fine-tuning steps at the first run's size ran
    1.2x (full) and 1.75x (LoRA) as fast on a 2-core Xeon with AMX (widths 12..64 drawn at random, bf16)."""
    T = max(len(rows.ids[i]) for i in which) - 1
    T = min(-(-T // PAD_TO) * PAD_TO, rows.longest - 1)
    x = np.zeros((len(which), T), dtype=np.int64)
    y = np.full((len(which), T), -1, dtype=np.int64)
    for b, i in enumerate(which):
        ids, mask = rows.ids[i], rows.masks[i]
        n = len(ids) - 1
        x[b, :n] = ids[:-1]
        y[b, :n] = np.where(mask[1:], ids[1:], -1)
    return torch.from_numpy(x), torch.from_numpy(y)


class RandomConversations(BatchStream):
    """An endless stream of training batches of conversations drawn at random; batch i is a pure function of
    (seed, rank, i), as RandomWindows', so a resumed run continues where it stopped.

    Conversations of like length go together (as `group_by_length` in Hugging Face's Trainer): `GROUP`
    batches' worth are drawn at once, sorted by length, cut into batches and served in a random order, so
    a batch is padded little (a random batch of short chats is padded to its longest, often twice their mean).
    """

    GROUP = 16

    def __init__(self, rows: Rows, batch_size: int, seed: int, rank: int = 0, start_batch: int = 0) -> None:
        self.rows, self.batch_size, self.seed, self.rank, self.start_batch = rows, batch_size, seed, rank, start_batch
        self.lengths = np.array([len(ids) for ids in rows.ids])

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        group, j = divmod(i, self.GROUP)
        rng = np.random.default_rng([self.seed, self.rank, group])
        drawn = rng.integers(0, len(self.rows), size=self.batch_size * self.GROUP)
        drawn = drawn[np.argsort(self.lengths[drawn], kind="stable")]
        k = rng.permutation(self.GROUP)[j]
        return pad(self.rows, drawn[k * self.batch_size : (k + 1) * self.batch_size].tolist())


class RandomQuestions(BatchStream):
    """An endless stream of batches of question indices (objective=grpo's prompts), batch i a pure function of
    (seed, rank, i), as RandomConversations'."""

    def __init__(self, count: int, batch_size: int, seed: int, rank: int = 0, start_batch: int = 0) -> None:
        self.count, self.batch_size, self.seed, self.rank, self.start_batch = count, batch_size, seed, rank, start_batch

    def batch(self, i: int) -> torch.Tensor:  # type: ignore[override]
        rng = np.random.default_rng([self.seed, self.rank, i])
        return torch.from_numpy(rng.integers(0, self.count, size=self.batch_size))


class OrderedConversations(Dataset):
    """Every row once, in order, batch_size at a time: validation and evaluation."""

    def __init__(self, rows: Rows, batch_size: int) -> None:
        self.rows, self.batch_size = rows, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = j * self.batch_size
        return pad(self.rows, range(start, min(start + self.batch_size, len(self.rows))))


def loader(rows: Rows, batch_size: int) -> DataLoader:
    return DataLoader(OrderedConversations(rows, batch_size), batch_size=None, shuffle=False)


def tokens_per_char(rows: Rows, tokenizer: Tokenizer) -> float:
    """Answer tokens (with their end markers) per character of answer text, for bits per character."""
    chars = sum(len(tokenizer.decode(ids[1:][m[1:]])) for ids, m in zip(rows.ids, rows.masks))
    return rows.targets / max(1, chars)


def summary(train: Rows, val: Rows, how: str, limit: int, overflow: str) -> str:
    """One line: the conversations of each split, and what happened to those longer than the context."""
    line = f"{len(train):,} train and {len(val):,} val conversations ({how}), {train.targets:,} answer tokens in train"
    long = train.truncated + val.truncated + train.dropped + val.dropped
    if not long:
        return f"{line}; none longer than the context of {limit} tokens"
    what = f"{train.truncated + val.truncated:,} truncated"
    if train.dropped + val.dropped:
        what += f", {train.dropped + val.dropped:,} left out"
    other = "data.overflow=drop leaves them out" if overflow == "truncate" else "data.overflow=truncate keeps their start"
    return f"{line}; {long:,} longer than the context of {limit} tokens: {what} ({other})"
