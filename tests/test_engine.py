"""The decoding engine (gptlab/model/engine.py): requests that arrive at different steps share the cache's rows,
join and leave between steps, and each gets the tokens it gets alone; stop tokens, stop strings and streamed
text handled once, incrementally."""

import inspect

import pytest
import torch

from gptlab.model import GPT, Engine, GPTConfig, Request, generate
from gptlab.model.gpt import MLP, Block, CausalSelfAttention
from gptlab.model.text import TextStream
from gptlab.tokenizers import CharTokenizer


def lively(**kw) -> GPT:
    """Large random weights: greedy tokens that depend on every position and on what each row sees."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(**{"vocab_size": 50, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 32,
                         "dropout": 0.0, "tie_weights": False, **kw})).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3) if p.dim() > 1 else None
    return m


def alone(m: GPT, req: Request) -> list[int]:
    gen = torch.Generator().manual_seed(req.seed)
    out = generate(m, torch.tensor([req.prompt]), req.max_new_tokens, temperature=req.temperature,
                   top_k=req.top_k, top_p=req.top_p, generator=gen, stop_token=req.stop_token)
    return out[0, len(req.prompt):].tolist()


@pytest.mark.parametrize("levers", [{}, {"pos": "rope", "n_kv_head": 2, "norm_type": "rmsnorm"}])
def test_requests_arriving_at_different_steps_each_get_their_answer_alone(levers):
    m = lively(**levers)
    torch.manual_seed(4)
    requests = [Request(torch.randint(0, 50, (n,)).tolist(), new, temperature=t, top_k=k, seed=s)
                for n, new, t, k, s in [(5, 10, 0.0, None, 1), (9, 4, 0.0, None, 2), (2, 12, 1.0, 10, 3),
                                        (7, 6, 0.8, None, 4), (3, 8, 0.0, None, 5), (11, 3, 1.0, None, 6),
                                        (30, 9, 0.0, None, 7)]]  # the last slides past the context of 32
    expected = [alone(m, r) for r in requests]
    engine = Engine(m, rows=3, vocab_size=50)
    arrivals = {0: requests[:2], 2: requests[2:4], 5: requests[4:]}  # step -> the requests that come then
    step = 0
    while step in arrivals or engine.busy:
        for r in arrivals.get(step, []):
            engine.add(r)
        engine.step()
        assert sum(s is not None for s in engine.slots) <= 3
        step += 1
    assert [r.tokens for r in requests] == expected and all(r.finish == "length" for r in requests)
    assert len({tuple(e) for e in expected}) == len(expected)  # the answers differ


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_under_autocast_the_cache_takes_autocasts_dtype_and_rows_decode_alone(attention):
    """bf16-mixed training decodes inside the step's autocast (RL's rollouts): keys and values come in bfloat16."""
    m = lively(attention=attention, bias=True)
    requests = [Request([1, 2, 3, 4, 5][: n], 6, seed=n) for n in range(1, 6)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = [alone(m, Request(r.prompt, r.max_new_tokens, seed=r.seed)) for r in requests]
        engine = Engine(m, rows=2)
        engine.run(requests)  # 2 rows for 5 requests: rows are read and decoded apart
    assert engine.cache.k.dtype == torch.bfloat16
    assert [r.tokens for r in requests] == expected


def test_a_cancelled_request_frees_its_row_at_once_and_a_stop_token_ends_one():
    m = lively()
    engine = Engine(m, rows=1)
    first, second = Request([1, 2, 3], 20), Request([4, 5], 5)
    engine.add(first)
    engine.add(second)
    engine.step()
    assert engine.slots == [first] and list(engine.waiting) == [second]
    engine.cancel(first)  # its client went away
    assert engine.slots == [None] and first.finish == "cancelled"
    engine.step()
    assert engine.slots == [second]
    while engine.busy:
        engine.step()
    assert second.tokens == alone(m, Request([4, 5], 5))
    stop = alone(m, Request([7, 8], 6))[2]  # the third token it would write
    ended = engine.add(Request([7, 8], 6, stop_token=stop))
    while engine.busy:
        engine.step()
    assert ended.tokens[-1] == stop and len(ended.tokens) <= 3 and ended.finish == "stop"


def test_bad_requests_are_refused():
    engine = Engine(lively(), rows=2, max_len=16)
    with pytest.raises(ValueError, match="more than this engine's 16 cache slots"):
        engine.add(Request(list(range(10)), 8))
    with pytest.raises(ValueError, match="at least one prompt token"):
        Request([], 5)
    with pytest.raises(ValueError, match="temperature"):
        Request([1], 5, temperature=-1)
    with pytest.raises(ValueError, match="need an engine with a tokenizer"):
        engine.add(Request([1], 5, stop=["x"]))


def char_model(**kw) -> tuple[GPT, CharTokenizer]:
    tok = CharTokenizer.train("abcdefghij klmnop\n")
    return lively(vocab_size=tok.vocab_size, **kw), tok


def test_stop_strings_end_a_request_and_its_text_is_what_the_tokens_say():
    m, tok = char_model()
    free = Request(tok.encode("abc"), 24)
    Engine(m, 1, tok).run([free])
    text = tok.decode(free.tokens)
    assert free.text.text == text and free.finish == "length"
    stop = text[5:7]  # two characters the answer writes
    cut = text[: text.index(stop)]
    stopped = Request(tok.encode("abc"), 24, stop=[stop, "zz-never"])
    pieces = []
    engine = Engine(m, 1, tok)
    engine.run([stopped], on_step=lambda _: pieces.append(stopped.text.take()))
    assert stopped.text.text == cut and "".join(pieces) == cut and stopped.finish == "stop"
    assert len(stopped.tokens) == text.index(stop) + 2  # it ended on the token that finished the stop string


def test_text_holds_back_a_possible_stop_string_and_half_characters():
    class Bytes(CharTokenizer):  # tokens that are single UTF-8 bytes, as byte-level BPE's may be
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    tok = Bytes.train("x")
    stream = TextStream(tok, stops=["END"])
    shown = []
    for b in "caf\u00e9 EN".encode() + b"D!":
        stream.push(b)
        shown.append(stream.take())
    assert "\ufffd" not in "".join(shown) and "".join(shown) == "caf\u00e9 " and stream.stopped
    assert shown[3] == "" and shown[4] == "\u00e9"  # the first byte of the two-byte character waits for the second
    assert shown[-3:] == ["", "", ""]  # "E", "N" held back, then "D" completes the stop string


def test_an_answer_costs_linear_decoding_not_quadratic():
    """Each token is decoded once (bounded), however long the answer: no re-decoding of the whole text per token,
    as the harness's generate_until did."""
    m, tok = char_model(block_size=64)
    decoded = []

    class Counting(type(tok)):
        def decode(self, ids):
            decoded.append(len(ids))
            return super().decode(ids)

    counting = Counting.from_dict(tok.to_dict())
    for n in (20, 200):  # slides past the context several times
        decoded.clear()
        req = Request(counting.encode("ab"), n, stop=["never-written"])
        Engine(m, 1, counting).run([req])
        assert len(req.tokens) == n and sum(decoded) <= 2 * n


def test_the_model_takes_at_most_three_arguments_and_one_place_decodes():
    for cls in (GPT, Block, CausalSelfAttention, MLP):
        assert len(inspect.signature(cls.forward).parameters) - 1 <= 3, cls
    import gptlab

    root = __import__("pathlib").Path(gptlab.__file__).parent
    callers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "cache=" in p.read_text()
                     and p.name != "gpt.py")
    assert callers == ["model/engine.py"]  # the one decode loop
