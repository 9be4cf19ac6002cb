"""Generation with the static KV cache: the same greedy tokens as without a cache, compiled or not, on the
model's device."""

import pytest
import torch

from gptlab.model import GPT, GPTConfig, KVCache, generate
from gptlab.model.engine import Engine, _caches, decode_one


def cache_of(m: GPT, batch: int, max_len: int) -> KVCache:
    c = m.config
    return KVCache(c.n_layer, batch, c.kv_heads, max_len, c.head_size, torch.device("cpu"), torch.float32)


def lively(**kw) -> GPT:
    """A tiny model with large random weights: its greedy continuations vary with the context (at GPT-2's
    init a tiny tied model only repeats its last token, which any cache would get right)."""
    cfg = dict(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0, tie_weights=False)
    cfg.update(kw)
    torch.manual_seed(0)
    m = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return m


def can_compile() -> bool:
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return torch._dynamo.is_dynamo_supported() and bool(get_cpp_compiler())
    except Exception:  # no dynamo on this platform, or no C++ compiler for inductor's CPU kernels
        return False


@pytest.mark.parametrize("norm, attention, batch", [("pre", "sdpa", 1), ("pre", "explicit", 1), ("post", "sdpa", 1),
                                                     ("post", "explicit", 1), ("pre", "sdpa", 3), ("post", "explicit", 3)])
def test_static_cache_greedy_equals_no_cache(norm, attention, batch):
    m = lively(norm=norm, attention=attention)
    torch.manual_seed(1)
    for prompt_len in (5, 20):  # a short prompt, and one longer than the block
        prompt = torch.randint(0, 50, (batch, prompt_len))
        cached = generate(m, prompt, 40, temperature=0)  # slides past block_size=16 several times
        plain = generate(m, prompt, 40, temperature=0, use_cache=False)
        assert cached.shape == (batch, prompt_len + 40)
        assert torch.equal(cached, plain)
        assert len(set(cached[0, prompt_len:].tolist())) > 3  # the tokens depend on the context


def test_decode_step_logits_equal_full_forward():
    m = lively()
    x = torch.randint(0, 50, (2, 12))
    full = m(x)[0]  # (2, 12, vocab)
    cache = cache_of(m, 2, 16)
    logits = m(x[:, :4], cache=cache)[0]
    assert logits.shape == (2, 1, 50)  # with a cache only the last position's logits are computed
    assert torch.allclose(logits[:, 0], full[:, 3], atol=1e-5)
    for t in range(4, 12):  # the cache knows where each token goes: positions 4, 5, ...
        logits = decode_one(m, x[:, t : t + 1], cache)
        assert torch.allclose(logits, full[:, t], atol=1e-5)
    assert cache.length.tolist() == [12, 12]


def test_seeded_sampling_with_and_without_the_cache_agree():
    m = lively()
    prompt = torch.randint(0, 50, (2, 3))
    a = generate(m, prompt, 30, 0.9, 10, 0.9, generator=torch.Generator().manual_seed(3))
    b = generate(m, prompt, 30, 0.9, 10, 0.9, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert a.shape == (2, 33) and torch.equal(a, b)


def test_a_compiled_engine_keeps_its_cache_for_the_next_and_two_live_engines_never_share_one():
    m = lively()
    first, second = Engine(m, 2, compile=True), Engine(m, 2, compile=True)  # made, not run: nothing compiles
    assert second.cache is not first.cache  # first is alive: second gets a cache of its own
    kept = second.cache
    del first, second
    assert Engine(m, 2, compile=True).cache is kept  # the same tensors, for the CUDA graphs of the last one
    assert Engine(m, 2).cache is not kept  # eager engines make their own


def test_caches_made_in_inference_mode_serve_outside_it():
    m = lively()
    prompt = torch.randint(0, 50, (2, 5))
    with torch.inference_mode():  # as the benchmark runs
        a = generate(m, prompt, 10, temperature=0)
    assert torch.equal(generate(m, prompt, 10, temperature=0), a)  # new caches: inference tensors are read-only here


@pytest.mark.parametrize("same_rows", [False, True])
def test_stop_token_pads_finished_rows_and_cuts_after_the_last(same_rows):
    m = lively()
    prompt = torch.randint(0, 50, (3, 4))
    if same_rows:
        prompt = prompt[:1].expand(3, 4)
    full = generate(m, prompt, 40, temperature=0)
    stop = int(full[0, 6])  # row 0 stops at its third new token
    expected = full.clone()
    ends = []
    for row in expected:
        hits = (row[4:] == stop).nonzero()
        if len(hits):
            row[4 + int(hits[0]) + 1 :] = stop  # after its stop a row only pads
        ends.append(4 + int(hits[0]) + 1 if len(hits) else full.size(1))
    expected = expected[:, : max(ends)]
    out = generate(m, prompt, 40, temperature=0, stop_token=stop)
    assert torch.equal(out, expected)
    if same_rows:
        assert out.size(1) <= 7  # every row stopped by the third token: generation ended there


@pytest.mark.skipif(not can_compile(), reason="torch.compile is not available on this platform")
def test_compiled_decode_step_matches_eager_whatever_the_shapes():
    """Nine batch sizes, prompt lengths and stops (rows leaving the batch): more shapes than dynamo compiles anew
    (8) before it gives up, which with fullgraph=True is an error; they become dynamic instead."""
    m = lively(block_size=32)
    for B in range(1, 10):
        torch.manual_seed(B)
        prompt = torch.randint(0, 50, (B, 2 + B))
        stop = int(generate(m, prompt[:1], 4, temperature=0)[0, -1])  # row 0 stops at its fourth token
        eager = generate(m, prompt, 12, temperature=0, compile=False, stop_token=stop)
        compiled = generate(m, prompt, 12, temperature=0, compile=True, stop_token=stop)  # CPU: the default mode
        assert torch.equal(compiled, eager)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_generation_stays_on_the_gpu():
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32: every path multiplies alike
    try:
        m = lively().cuda()
        prompt = torch.randint(0, 50, (3, 5))  # on the CPU: generate moves it to the model's device
        ref = generate(m, prompt, 40, temperature=0, use_cache=False)
        assert ref.device.type == "cuda"
        for compile in (False, True):  # True: decode_one as a CUDA graph (torch.compile's reduce-overhead)
            assert torch.equal(generate(m, prompt, 40, temperature=0, compile=compile), ref)
        assert _caches[m][0].k.device.type == "cuda"  # the compiled engine's cache, kept
        g = torch.Generator(device="cuda").manual_seed(0)
        sampled = generate(m, prompt.cuda(), 20, temperature=1.0, top_k=5, top_p=0.9, generator=g, stop_token=3)
        assert sampled.device.type == "cuda" and sampled.size(1) <= 25
    finally:
        torch.set_float32_matmul_precision(precision)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_rows_of_one_cache_fed_apart_each_see_their_own_sequence(pos):
    """The cache's rows at the model's level: each request's prompt read into its own row (`cache.rows`) while the
    others wait, then every row takes one token per step at its own position; a row freed by a finished request
    is emptied for the next. Each gets the greedy tokens it gets alone."""
    m = lively(pos=pos, block_size=32)
    torch.manual_seed(3)
    prompts = [torch.randint(0, 50, (n,)).tolist() for n in (5, 9, 2, 7)]
    budgets = [10, 4, 12, 6]
    alone = [generate(m, torch.tensor([p]), n, temperature=0)[0, len(p):].tolist() for p, n in zip(prompts, budgets)]
    slots, waiting = [None, None], list(range(len(prompts)))  # two cache rows for four requests
    got: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    nxt = torch.zeros(2, 1, dtype=torch.long)
    cache = cache_of(m, 2, 32)
    with torch.no_grad():
        while waiting or any(s is not None for s in slots):
            for r in range(2):  # a free row takes the next request: its prompt read into that row alone
                if slots[r] is None and waiting:
                    i = waiting.pop(0)
                    cache.rows = torch.tensor([r])
                    cache.reset(cache.rows)
                    logits = m(torch.tensor([prompts[i]]), cache=cache)[0][:, -1]
                    slots[r], nxt[r, 0] = i, logits.argmax(-1)
                    got[i].append(int(nxt[r, 0]))
            cache.rows = None
            nxt = m(nxt, cache=cache)[0][:, -1].argmax(-1, keepdim=True)  # every row, each at its own slot
            for r, i in enumerate(slots):
                if i is None:
                    continue
                if len(got[i]) < budgets[i]:
                    got[i].append(int(nxt[r, 0]))
                if len(got[i]) == budgets[i]:
                    slots[r] = None  # finished: the row is free for the next request
    assert [got[i] for i in range(len(prompts))] == alone
    assert len({tuple(a) for a in alone}) == len(alone)  # the answers differ: positions and contexts matter
