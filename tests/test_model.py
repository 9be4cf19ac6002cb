import math

import pytest
import torch

from gptlab.model import GPT, ConfigError, GPTConfig, filter_logits, generate, param_groups, sample_next


def tiny(**kw) -> GPT:
    cfg = dict(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    cfg.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**cfg)).eval()


def test_shapes_and_loss():
    m = tiny()
    x = torch.randint(0, 50, (3, 16))
    logits, loss = m(x, x)
    assert logits.shape == (3, 16, 50)
    assert loss.ndim == 0
    assert m(x)[1] is None


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_causal_masking(attention, norm):
    m = tiny(attention=attention, norm=norm)
    x = torch.randint(0, 50, (2, 16))
    base = m(x)[0]
    for t in range(15):
        y = x.clone()
        y[:, t + 1 :] = torch.randint(0, 50, y[:, t + 1 :].shape)  # change everything after t
        out = m(y)[0]
        assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6), f"position <= {t} saw the future"
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])


def test_sdpa_equals_explicit_and_weights_are_causal():
    sdpa, explicit = tiny(), tiny(attention="explicit")
    explicit.load_state_dict(sdpa.state_dict())
    x = torch.randint(0, 50, (2, 16))
    assert torch.allclose(sdpa(x)[0], explicit(x)[0], atol=1e-5)
    maps = sdpa.attention_weights(x)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 16, 16)
    for w in maps:
        assert torch.allclose(w.sum(-1), torch.ones(2, 4, 16), atol=1e-5)
        assert torch.all(w.triu(diagonal=1) == 0)


@pytest.mark.parametrize("lever", [{}, {"pos": "rope", "n_kv_head": 2, "qk_norm": True}])
def test_training_takes_the_fused_causal_path_with_no_mask(lever, monkeypatch):
    """Training and evaluation call SDPA with is_causal=True and no mask (the flash kernel on a GPU); with a KV
    cache (decoding) the cache's mask is passed instead."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        calls.append((attn_mask, is_causal, dropout_p))
        return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.1, **lever))
    x = torch.randint(0, 50, (2, 16))
    m(x, targets=x)[1].backward()
    assert calls == [(None, True, 0.1)] * 2
    calls.clear()
    generate(m.eval(), x[:, :8], 1, temperature=0)  # the prompt read with the cache: its mask, no dropout
    assert len(calls) == 2 and all(mask is not None and not causal and p == 0.0 for mask, causal, p in calls)


@pytest.mark.parametrize("threads", [2, 3])
def test_decodings_linear_split_across_threads_equals_one_product(threads):
    """Linear cuts a few rows' product by output rows, one part per thread (leftover rows alone): the same numbers.
    The suite runs one thread per worker, so the split is asked for here."""
    from gptlab.model.linear import Linear

    torch.manual_seed(0)
    layer, before = Linear(48, 100), torch.get_num_threads()  # 100 rows: 3 threads leave one over
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for x in (torch.randn(3, 48), torch.randn(2, 1, 48)):
                torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("options", [{}, {"logit_softcap": 3.0, "tie_weights": False}, {"recompute": True}])
def test_training_loss_in_chunks_equals_the_whole_logits(options, monkeypatch):
    """A training step's loss (model/loss.py: the head's logits a chunk at a time, no logits kept) and every gradient
    equal cross-entropy over the whole logits, ignored targets included; model.recompute changes no gradient."""
    import gptlab.model.loss as loss_module

    monkeypatch.setattr(loss_module, "LOGITS_AT_ONCE", 7 * 50)  # chunks of 7 tokens: the last one short
    m = tiny(**options).train()
    x = torch.randint(0, 50, (3, 16))
    y = x.roll(-1, 1)
    y[0, :5] = -1  # a prompt's tokens are not scored
    logits, loss = m(x, y)
    assert logits is None
    loss.backward()
    chunked = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    whole = torch.nn.functional.cross_entropy(m.head(m.features(x)).flatten(0, 1), y.flatten(), ignore_index=-1)
    whole.backward()
    assert loss.item() == pytest.approx(whole.item(), abs=1e-6)
    for n, p in m.named_parameters():
        assert torch.allclose(chunked[n], p.grad, atol=1e-6), n


def test_initial_loss_is_log_vocab():
    m = tiny(vocab_size=65)
    torch.manual_seed(1)
    x, y = torch.randint(0, 65, (8, 16)), torch.randint(0, 65, (8, 16))
    assert m(x, y)[1].item() == pytest.approx(math.log(65), abs=0.1)


def test_nano_overfits_short_text():
    text = "First Citizen: Before we proceed any further, hear me speak. All: Speak, speak."
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    m = tiny(vocab_size=len(chars), block_size=32).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    x = torch.stack([ids[i : i + 32] for i in range(0, len(ids) - 33, 4)])
    y = torch.stack([ids[i + 1 : i + 33] for i in range(0, len(ids) - 33, 4)])
    first = m(x, y)[1].item()
    for _ in range(150):
        loss = m(x, y)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.0 and loss.item() < 0.1 * first


def test_gpt2_parameter_names_tying_and_count():
    m = tiny()
    names = set(m.state_dict())
    for expected in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
                     "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.bias",
                     "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight",
                     "transformer.ln_f.weight", "lm_head.weight"]:
        assert expected in names
    assert m.lm_head.weight is m.transformer.wte.weight
    # GPT-2 small: 124M parameters counted with its 50,257-token vocabulary and tied head
    gpt2 = GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0))
    assert gpt2.num_params(non_embedding=False) == 124_439_808
    gpt1 = tiny(norm="post")
    assert "transformer.ln_f.weight" not in gpt1.state_dict()


def test_init_scales_residual_projections():
    m = GPT(GPTConfig(vocab_size=100, block_size=8, n_layer=8, n_head=4, n_embd=256))
    assert m.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)


def test_param_groups_skip_biases_and_norms():
    m = tiny()
    decay, no_decay = param_groups(m)
    assert all(p.dim() == 2 for p in decay["params"]) and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in no_decay["params"]}
    assert id(m.transformer.h[0].ln_1.weight) in ids and id(m.transformer.h[0].attn.c_attn.bias) in ids
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == m.num_params(non_embedding=False)


def test_invalid_shapes_fail_clearly():
    with pytest.raises(ConfigError, match="n_embd=100 is not divisible by model.n_head=3"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ConfigError, match="activation"):
        GPTConfig(activation="swish")
    with pytest.raises(ValueError, match="longer than model.block_size=16"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_kv_cache_greedy_equals_no_cache():
    m = tiny(vocab_size=50, block_size=64)
    prompt = torch.randint(0, 50, (2, 5))
    with_cache = generate(m, prompt, 40, temperature=0, use_cache=True)
    without = generate(m, prompt, 40, temperature=0, use_cache=False)
    assert torch.equal(with_cache, without)


def test_generation_slides_past_block_size():
    m = tiny(block_size=16)
    out = generate(m, torch.randint(0, 50, (1, 40)), 50, temperature=1.0, top_k=10, use_cache=True)
    assert out.shape == (1, 90)  # a prompt longer than the block, and generation far past it


def test_padded_vocabulary_is_never_sampled():
    m = tiny(vocab_size=64)  # e.g. 50,257 tokens padded to 50,304: ids 50..63 are padding
    g = torch.Generator().manual_seed(0)
    free = generate(m, torch.zeros(4, 1, dtype=torch.long), 60, temperature=2.0, generator=g)
    assert free.max() >= 50  # an untrained model does pick padding ids ...
    out = generate(m, torch.zeros(4, 1, dtype=torch.long), 60, temperature=2.0, generator=g, vocab_size=50)
    assert out.max() < 50  # ... unless told where the tokenizer's vocabulary ends


def test_top_k_and_top_p_keep_the_right_sets():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda f: (f[0] > float("-inf")).nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [0, 1]
    assert kept(filter_logits(logits, top_p=0.5)) == [0]  # 0.5 reaches 0.5
    assert kept(filter_logits(logits, top_p=0.6)) == [0, 1]
    assert kept(filter_logits(logits, top_p=0.85)) == [0, 1, 2]
    assert kept(filter_logits(logits, top_p=1.0)) == [0, 1, 2, 3, 4]
    assert kept(filter_logits(logits, top_k=4, top_p=0.9)) == [0, 1, 2, 3]
    shuffled = logits[:, [3, 0, 4, 2, 1]]  # order in the vocabulary must not matter
    assert kept(filter_logits(shuffled, top_p=0.6)) == [1, 4]
    assert sample_next(logits, temperature=0).item() == 0
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, 1.0, top_k=2, generator=g).item() for _ in range(200)}
    assert draws == {0, 1}
