"""Assistant fine-tuning: the chat template and its loss mask, conversations read and cut to the context, padded
batches that keep rows apart, a short SFT run through the CLI, exact-match eval, and the chat's stdin mode."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlab import checkpoint
from gptlab.chat import Session, interactive
from gptlab.config import ChatConfig
from gptlab.data import chat as chat_data
from gptlab.data.sources import DataError
from gptlab.model import GPT, GPTConfig, add_tokens
from gptlab.model import GREEDY
from gptlab.model.chat import fit, reply
from gptlab.tokenizers import ByteLevelBPE, CharTokenizer, tokenizer_from_dict
from gptlab.tokenizers.chat import END, MARKERS, SPECIALS, chat_tokenizer, parse, render
from gptlab.train import train
from conftest import REPO, make_cfg

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "and now add 10"},
    {"role": "assistant", "content": "15"},
]


def char_chat(text: str = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+?.,:'\"<|>\n") -> CharTokenizer:
    return chat_tokenizer(CharTokenizer.train(text))  # type: ignore[return-value]


def test_template_renders_markers_as_their_own_ids_and_round_trips():
    tok = char_chat()
    ids, mask = render(tok, CONVERSATION)
    assert parse(tok, ids) == CONVERSATION
    special = set(tok.special_tokens.values())
    assert [i for i in ids if i in special] == [tok.special_tokens[s] for s in
                                                 ("<|system|>", END, "<|user|>", END, "<|assistant|>", END,
                                                  "<|user|>", END, "<|assistant|>", END)]
    # a message that contains a marker's text is ordinary text: no special id, and it comes back as written
    tricky = [{"role": "user", "content": "say <|assistant|> or <|end|>"}, {"role": "assistant", "content": "ok"}]
    ids2, _ = render(tok, tricky)
    assert sum(i in special for i in ids2) == 4 and parse(tok, ids2) == tricky
    prompt, pmask = render(tok, CONVERSATION[:2], reply=True)
    assert prompt[-1] == tok.special_tokens[MARKERS["assistant"]] and not any(pmask)


def test_loss_mask_covers_exactly_the_answers_and_their_end_markers():
    tok = char_chat()
    rows = chat_data.encode(tok, [chat_data.Conversation(CONVERSATION, "hand-made:1")], max_len=200, overflow="drop")
    x, y = chat_data.pad(rows, [0])
    ids = rows.ids[0].tolist()
    assert x[0].tolist() == ids[:-1]
    scored = [t + 1 for t in range(len(ids) - 1) if y[0, t] != -1]  # positions of the ids the loss predicts
    assert all(int(y[0, t - 1]) == ids[t] for t in scored)
    # by hand: the tokens of "5" + <|end|> and "15" + <|end|>, nothing else
    text = [tok.decode([i]) for i in ids]
    expected = []
    for k, piece in enumerate(text):
        prev = "".join(text[:k])
        if prev.endswith("<|assistant|>") and piece == "5" or prev.endswith("<|assistant|>5") and piece == END:
            expected.append(k)
        if prev.endswith("<|assistant|>") and piece == "1" or prev.endswith("<|assistant|>1") and piece == "5" \
                or prev.endswith("<|assistant|>15") and piece == END:
            expected.append(k)
    assert scored == expected and len(scored) == 5
    everything = chat_data.encode(tok, [chat_data.Conversation(CONVERSATION, "f:1")], 200, "drop", loss_on="all")
    assert (chat_data.pad(everything, [0])[1] == x[:, 1:].new_tensor(ids[1:])).all()  # the ablation: every token


def test_long_conversations_are_truncated_or_dropped_and_counted():
    tok = char_chat()
    short = chat_data.Conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "f:1")
    long = chat_data.Conversation([{"role": "user", "content": "abc"}, {"role": "assistant", "content": "x" * 40}], "f:2")
    late = chat_data.Conversation([{"role": "user", "content": "q" * 40}, {"role": "assistant", "content": "a"}], "f:3")
    cut = chat_data.encode(tok, [short, long, late], max_len=20, overflow="truncate")
    assert (len(cut), cut.truncated, cut.dropped) == (2, 1, 1)  # `late` has no answer token left: out
    assert len(cut.ids[1]) == 20 and cut.masks[1][1:].sum() == 20 - 6  # <|user|> a b c <|end|> <|assistant|>
    drop = chat_data.encode(tok, [short, long, late], max_len=20, overflow="drop")
    assert (len(drop), drop.truncated, drop.dropped) == (1, 0, 2)
    line = chat_data.summary(cut, drop, "f", 20, "truncate")
    assert "4 longer than the context of 20 tokens: 1 truncated, 3 left out" in line  # train + val


def test_padded_rows_never_see_each_other():
    """A conversation's logits are the same alone or batched with any other conversation and its padding."""
    tok = char_chat()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)).eval()
    target = chat_data.Conversation(CONVERSATION[1:3], "t:1")
    alone = chat_data.encode(tok, [target], 65, "drop")
    x1, _ = chat_data.pad(alone, [0])
    ref = model(x1)[0][0]
    for other in ("Reverse: garden", "x" * 50, "?"):
        conv = chat_data.Conversation([{"role": "user", "content": other}, {"role": "assistant", "content": "ok"}], "o:1")
        rows = chat_data.encode(tok, [conv, target], 65, "drop")
        x, y = chat_data.pad(rows, [0, 1])
        got = model(x)[0][1, : x1.size(1)]
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
        assert (y[1, x1.size(1):] == -1).all()  # the padding is never scored


def test_training_batches_are_reproducible_and_group_like_lengths():
    tok = char_chat()
    convs = [chat_data.Conversation([{"role": "user", "content": "q" * (1 + k % 40)},
                                     {"role": "assistant", "content": "a"}], f"f:{k}") for k in range(400)]
    rows = chat_data.encode(tok, convs, 65, "drop")
    stream = chat_data.RandomConversations(rows, batch_size=8, seed=1)
    again = chat_data.RandomConversations(rows, batch_size=8, seed=1, start_batch=5)
    assert torch.equal(stream.batch(5)[0], next(iter(again))[0])  # batch i depends on i alone: resumable
    widths = [stream.batch(i)[0].size(1) for i in range(32)]
    # rows 3..42 tokens long: sorted groups keep a batch within a few tokens of its longest
    assert min(widths) < 15 and max(widths) > 35 and all(stream.batch(i)[0].size(0) == 8 for i in range(4))
    # widths rounded up to a multiple of 8 (few shapes: a CPU's matmul kernels are reused), never past the longest row
    assert all(w % chat_data.PAD_TO == 0 or w == rows.longest - 1 for w in widths) and max(widths) == rows.longest - 1
    for i in range(8):
        x, _ = stream.batch(i)
        lengths = (x != 0).sum(1)
        assert int(lengths.max() - lengths.min()) <= 6


def test_new_tokens_start_as_the_mean_row_and_old_logits_stay():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    idx = torch.randint(0, 20, (2, 8))
    before = model(idx)[0]
    grown = add_tokens(model, 20, 24).eval()
    assert grown.config.vocab_size == 24
    wte = grown.transformer.wte.weight
    torch.testing.assert_close(wte[20:], wte[:20].mean(0).expand(4, -1))
    torch.testing.assert_close(grown(idx)[0][..., :20], before)


def test_special_tokens_extend_a_bpe_and_a_char_vocabulary_without_moving_old_ids(shakespeare_text):
    bpe = ByteLevelBPE.train(shakespeare_text[:50_000], vocab_size=300, show_progress=False)
    with_chat = chat_tokenizer(bpe)
    assert [with_chat.special_tokens[s] for s in SPECIALS] == list(range(300, 304))
    assert with_chat.encode("ROMEO: <|user|>") == bpe.encode("ROMEO: <|user|>")
    char = CharTokenizer.train(shakespeare_text)
    grown = chat_tokenizer(char.with_chars("What is 7 + 8?"))
    assert grown.encode("ROMEO:") == char.encode("ROMEO:") and grown.vocab_size == char.vocab_size + 3 + 4
    assert tokenizer_from_dict(grown.to_dict()).tokens == grown.tokens  # type: ignore[attr-defined]
    assert tokenizer_from_dict(char.to_dict()).to_dict() == {"kind": "char", "chars": "".join(char.chars)}


@pytest.mark.parametrize("line, message", [
    ('{"messages": [{"role": "user", "content": "hi"}, ', "bad.jsonl:2: not valid JSON"),
    ('{"messages": [{"role": "robot", "content": "hi"}]}', "bad.jsonl:2: message 1 has the unknown role 'robot'"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "bad.jsonl:2: the conversation has no assistant message"),
    ('["hi"]', "bad.jsonl:2: a line must be a JSON object"),
    ('{"prompt": "hi"}', 'bad.jsonl:2: no "messages"'),
])
def test_bad_lines_name_the_file_and_line(tmp_path, line, message):
    good = json.dumps({"instruction": "Add", "input": "2 3", "output": "5"})
    (tmp_path / "bad.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError, match=re.escape(message)):
        chat_data.read_conversations(tmp_path / "bad.jsonl")


def test_alpaca_records_and_empty_files(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"instruction": "Add", "input": "2 3", "output": "5"}) + "\n\n")
    (conv,) = chat_data.read_conversations(tmp_path / "a.jsonl")
    assert conv.messages == [{"role": "user", "content": "Add\n\n2 3"}, {"role": "assistant", "content": "5"}]
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl is empty"):
        chat_data.read_conversations(tmp_path / "empty.jsonl")


def test_splits_are_by_conversation_and_never_read_the_test_file(tmp_path):
    def write(name, n, tag):
        lines = [json.dumps({"messages": [{"role": "user", "content": f"{tag}{k}"},
                                          {"role": "assistant", "content": "ok"}]}) for k in range(n)]
        (tmp_path / name).write_text("\n".join(lines) + "\n")

    write("train.jsonl", 20, "t")
    write("test.jsonl", 5, "x")
    train, val, how = chat_data.split(tmp_path, 0.1)
    assert (len(train), len(val)) == (18, 2) and how == "every 10th conversation to val"
    assert not any(c.messages[0]["content"].startswith("x") for c in train + val)
    assert {c.messages[0]["content"] for c in val} == {"t9", "t19"}
    write("val.jsonl", 3, "v")
    train, val, how = chat_data.split(tmp_path, 0.1)
    assert (len(train), len(val), how) == (20, 3, "train.jsonl / val.jsonl")


def test_old_turns_leave_the_context_first_and_the_system_message_stays():
    tok = char_chat()
    msgs = [{"role": "system", "content": "S"}] + [
        {"role": r, "content": f"{r[0]}{k}" * 3} for k in range(6) for r in ("user", "assistant")][:-1]
    full, _ = render(tok, msgs, reply=True)
    ids, dropped = fit(tok, msgs, room=len(full) - 1)
    assert dropped == 2 and parse(tok, ids[:-1]) == [msgs[0]] + msgs[3:]
    assert fit(tok, msgs, room=len(full)) == (full, 0)
    two = msgs[1:4]  # user, assistant, user: the first turn goes whole, never leaving an answer without its question
    ids, dropped = fit(tok, two, room=len(render(tok, two, reply=True)[0]) - 1)
    assert dropped == 2 and parse(tok, ids[:-1]) == two[2:]


# --- through the command line --------------------------------------------------------------------------------

def cli(*args: str, stdin: str | None = None, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, input=stdin, cwd=cwd,
                          timeout=timeout)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, cache_dir):
    """A tiny char model pretrained on Tiny Shakespeare, fine-tuned through the CLI on generated tasks."""
    root = tmp_path_factory.mktemp("sft")
    train(make_cfg(root / "base", cache_dir, ["trainer.max_steps=30", "sample_tokens=0", "~callbacks.text_samples",
                                              "model.block_size=64"]))
    r = cli("scripts/make_tasks.py", f"out={root / 'tasks'}", "n=2000", "seed=3")
    assert r.returncode == 0, r.stderr
    r = cli("-m", "gptlab.train", "data=chat", f"data.path={root / 'tasks'}", f"init_from={root / 'base'}",
            "trainer=cpu", "trainer.max_steps=90", "trainer.val_check_interval=30", "data.batch_size=32",
            "optim.lr=3e-3", "scheduler.warmup_steps=5", "sample_tokens=12", "~callbacks.text_samples",
            "callbacks.progress_bar.mode=lines", f"paths.cache_dir={cache_dir}", f"hydra.run.dir={root / 'sft'}")
    assert r.returncode == 0, r.stderr[-3000:]
    return root, r.stdout


def test_sft_through_the_cli_lowers_the_answer_loss_and_grows_the_vocabulary(sft_run):
    root, out = sft_run
    assert re.search(r"data +1,800 train and 100 val conversations \(train.jsonl / val.jsonl\)", out), out
    assert out.count(" (expected ") == 3 and "--- greedy answers to val conversations ---" in out
    losses = [float(v) for v in re.findall(r"validation\s+val/loss (\d+\.\d+)", out)]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.3, out
    loaded = checkpoint.load(root / "sft")
    base = checkpoint.load(root / "base")
    tok = loaded.tokenizer
    assert all(s in tok.special_tokens for s in SPECIALS)
    assert tok.encode("ROMEO") == base.tokenizer.encode("ROMEO")  # the pretrained ids kept their meaning
    assert loaded.model.config.vocab_size == tok.vocab_size > base.tokenizer.vocab_size
    # the first rows are still the pretrained model's (trained on since: close, not equal), the new ones exist
    assert loaded.model.transformer.wte.weight.shape[0] == tok.vocab_size


def test_sft_from_a_gpt2_folder_adds_the_markers_as_new_ids(sft_run, hf_gpt2, tmp_path, cache_dir):
    root, _ = sft_run
    metrics = train(make_cfg(tmp_path / "run", cache_dir, [
        "data=chat", f"data.path={root / 'tasks'}", f"init_from={hf_gpt2}", "trainer.max_steps=3",
        "trainer.val_check_interval=3", "trainer.limit_val_batches=1", "sample_tokens=0", "~callbacks.text_samples"]))
    assert metrics["steps"] == 3
    loaded = checkpoint.load(tmp_path / "run")
    source = ByteLevelBPE.from_vocab_merges(hf_gpt2 / "vocab.json", hf_gpt2 / "merges.txt")
    assert [loaded.tokenizer.special_tokens[s] for s in SPECIALS] == list(range(300, 304))
    assert loaded.tokenizer.encode("What is 2 + 3?") == source.encode("What is 2 + 3?")
    assert loaded.model.config.vocab_size == 304


def test_eval_on_chat_data_reports_exact_match_and_answer_loss(sft_run):
    root, _ = sft_run
    r = cli("-m", "gptlab.eval", f"ckpt_path={root / 'sft'}", "data=chat", f"data.path={root / 'tasks' / 'test.jsonl'}")
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(next((root / "sft" / "checkpoints").glob("eval-*-test.json")).read_text())
    lines = (root / "tasks" / "test.jsonl").read_text().splitlines()
    answers = sum(m["role"] == "assistant" for line in lines for m in json.loads(line)["messages"])
    assert result["conversations"] == 100 and result["answers"] == answers
    assert 0.0 <= result["exact_match"] <= 1.0 and set(result["exact_match_by_task"]) <= {
        json.loads(line)["task"] for line in lines}
    assert f"exact match   {result['exact_match']:.1%} of answers" in r.stdout
    assert result["loss"] < 3.0


def test_chat_reads_one_message_from_stdin_as_typed(sft_run):
    root, _ = sft_run
    message = 'What is 12 + 7? "quoted", colon: comma, equals=1\nsecond line'
    r = cli("-m", "gptlab.chat", f"ckpt_path={root / 'sft'}", "temperature=0", "max_new_tokens=12", stdin=message + "\n")
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = checkpoint.load(root / "sft")
    greedy = GREEDY.__class__(max_new_tokens=12, temperature=0.0, top_k=None)
    # a character the char model never saw cannot reach it: left out, and said so; the rest goes as typed
    assert r.stderr.strip() == "[not in this model's vocabulary, left out: '\"']"
    seen = message.replace('"', "")
    expected, _ = reply(loaded.model, loaded.tokenizer, [{"role": "user", "content": seen}], greedy)
    assert r.stdout == expected + "\n"
    r = cli("-m", "gptlab.chat", f"ckpt_path={root / 'sft'}", "temperature=0", "max_new_tokens=12", "dtype=bfloat16",
            stdin="What is 12 + 7?")
    fast = checkpoint.load(root / "sft", dtype="bfloat16")
    assert r.returncode == 0 and r.stdout == reply(fast.model, fast.tokenizer, [
        {"role": "user", "content": "What is 12 + 7?"}], greedy)[0] + "\n"
    r = cli("-m", "gptlab.chat", f"ckpt_path={root / 'sft'}", stdin="")
    assert r.returncode == 2 and r.stderr.startswith("error: standard input holds no message")


def test_interactive_chat_streams_keeps_the_context_and_obeys_commands(sft_run, monkeypatch, capsys):
    root, _ = sft_run
    loaded = checkpoint.load(root / "sft")
    model, tok = loaded.model, loaded.tokenizer
    cfg = ChatConfig(ckpt_path=str(root / "sft"), temperature=0.0, top_k=None, max_new_tokens=6)
    questions = ["What is 12 + 30?", "and now add 5", "double it", "now subtract 3"]  # 4 turns: more than 64 tokens
    typed = iter([*questions, "/system Be brief\u20ac", "/reset", "What is 2 + 2?", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    interactive(Session(model, tok, cfg))
    out, err = capsys.readouterr()
    messages, answers = [], []
    for q in questions:  # what the library answers to the same conversation
        messages.append({"role": "user", "content": q})
        answer, dropped = reply(model, tok, messages, cfg)
        messages.append({"role": "assistant", "content": answer})
        answers.append(answer)
    last, _ = reply(model, tok, [{"role": "system", "content": "Be brief"},
                                 {"role": "user", "content": "What is 2 + 2?"}], cfg)
    assert out == "".join(f"model> {a}\n" for a in [*answers, last])  # each answer on its own line
    assert dropped > 0 and f"[the {dropped} oldest message(s) no longer fit in the context of 64 tokens" in err
    assert "left out: '\u20ac'" in err and "[system message set]" in err and "[a new conversation]" in err


def test_bad_chat_data_through_the_cli_is_one_line_and_writes_nothing(tmp_path, sft_run):
    root, _ = sft_run
    bad = tmp_path / "data.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                   '{"messages": [{"role": "user", "content": "hi"}]}\n')
    r = cli("-m", "gptlab.train", "data=chat", f"data.path={bad}", f"init_from={root / 'base'}", "trainer=cpu",
            f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {bad}:2: the conversation has no assistant message with content: "
                                             "nothing to learn from it"]
    assert not (tmp_path / "run").exists()
    r = cli("-m", "gptlab.chat", f"ckpt_path={root / 'base'}", stdin="hi")
    assert r.returncode == 2 and "was not fine-tuned on conversations" in r.stderr
