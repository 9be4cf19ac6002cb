"""The levers of later GPTs (rotary positions, RMSNorm, QK-norm, ReLU², SwiGLU, grouped-query attention, logit
soft-capping, zero-initialised projections): each keeps the model causal, gives the same tokens with and without
the KV cache, runs the explicit and the fused attention alike, trains and comes back from its checkpoint, and is
refused by the GPT-2 export in one line."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from gptlab import checkpoint
from gptlab.model import GPT, ConfigError, GPTConfig, generate
from gptlab.model.hf_export import exporter

LEVERS = {
    "rope": dict(pos="rope"), "rmsnorm": dict(norm_type="rmsnorm"), "qk_norm": dict(qk_norm=True),
    "relu2": dict(activation="relu2"), "swiglu": dict(activation="swiglu"), "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1), "softcap": dict(logit_softcap=10.0), "zero_init": dict(zero_init=True),
    "modern": dict(pos="rope", norm_type="rmsnorm", qk_norm=True, activation="swiglu", n_kv_head=2,
                   logit_softcap=30.0, bias=False, tie_weights=False),
}


def model(lever: str, **more) -> GPT:
    """A small model with the lever (or "gpt2": none, learned positions)."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50, block_size=24, n_layer=2, n_head=4, n_embd=32, dropout=0.0,
                       **LEVERS.get(lever, {}), **more)
    m = GPT(config).eval()
    if config.zero_init:  # zero projections make every later token's logits equal: give them some weight
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.endswith("c_proj.weight"):
                    p.normal_(0, 0.02)
    return m


@pytest.mark.parametrize("lever", LEVERS)
def test_no_position_sees_a_later_one(lever):
    m = model(lever)
    x = torch.randint(0, 50, (2, 16))
    y = x.clone()
    y[:, 10:] = torch.randint(0, 50, (2, 6))  # change only the future of position 9
    with torch.no_grad():
        a, b = m(x)[0], m(y)[0]
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5) and not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("lever", LEVERS)
def test_cache_explicit_and_fused_paths_agree(lever):
    m = model(lever)
    x = torch.randint(0, 50, (2, 7))
    plain = generate(m, x, 10, temperature=0.0, use_cache=False)
    assert torch.equal(generate(m, x, 10, temperature=0.0, use_cache=True), plain)
    explicit = model(lever, attention="explicit")
    with torch.no_grad():
        assert torch.allclose(m(plain)[0], explicit(plain)[0], atol=1e-5)
    maps = explicit.attention_weights(plain)  # inspect's path: one (B, n_head, T, T) map per layer
    assert len(maps) == 2 and maps[0].shape == (2, 4, 17, 17) and torch.allclose(maps[0].sum(-1), torch.ones(()))


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
@pytest.mark.parametrize("lever", ["gpt2", *LEVERS])
def test_prompts_of_different_lengths_in_one_left_padded_batch_each_as_if_alone(lever, attention):
    """generate(row_start=): each row of a left-padded batch gets the greedy tokens it gets alone (its positions
    count from its own start, it never attends to the padding), with every lever and both attention paths, also
    when the answers pass the context."""
    m = model(lever, attention=attention)
    with torch.no_grad():  # large weights: greedy tokens that depend on every position and on what is seen
        for p in m.parameters():
            p.normal_(0.0, 0.3) if p.dim() > 1 else None
    torch.manual_seed(2)
    prompts = [torch.randint(0, 50, (n,)).tolist() for n in (9, 3, 6, 1)]
    width = max(map(len, prompts))
    idx = torch.tensor([[7] * (width - len(p)) + p for p in prompts])  # any padding token: it is never seen
    out = generate(m, idx, 12, temperature=0.0, row_start=torch.tensor([width - len(p) for p in prompts]))
    for row, p in zip(out, prompts):
        alone = generate(m, torch.tensor([p]), 12, temperature=0.0)
        assert row[width:].tolist() == alone[0, len(p):].tolist()
    long = generate(m, idx, 24, temperature=0.0, row_start=torch.tensor([width - len(p) for p in prompts]))
    for row, p in zip(long, prompts):  # past the context of 16: each row's window slides as it does alone
        assert row[width:].tolist() == generate(m, torch.tensor([p]), 24, temperature=0.0)[0, len(p):].tolist()


@pytest.mark.parametrize("lever", ["rope", "swiglu", "gqa", "modern"])
def test_a_run_with_the_lever_trains_and_loads_back(lever, cfg_factory, tmp_path):
    from gptlab.train import train

    overrides = [f"model.{k}={v}" for k, v in LEVERS[lever].items()]
    metrics = train(cfg_factory(*overrides, "trainer.max_steps=4", "trainer.val_check_interval=4",
                                "sample_tokens=5"))
    loaded = checkpoint.load(tmp_path / "run")
    assert metrics["steps"] == 4 and all(getattr(loaded.model.config, k) == v for k, v in LEVERS[lever].items())
    x = torch.tensor([loaded.tokenizer.encode("ROMEO:")])
    assert torch.isfinite(loaded.model(x)[0]).all()
    if lever == "rope":  # alone it fits neither layout: the refusal says which levers would make it exportable
        from omegaconf import OmegaConf

        from gptlab import export
        from gptlab.errors import GptlabError

        for fmt in ("hf", "gguf"):
            with pytest.raises(GptlabError) as e:
                export.run(OmegaConf.create({"ckpt_path": str(tmp_path / "run"), "format": fmt}))
            assert str(e.value).count("cannot be exported") == 1 and str(e.value).endswith(
                "| exportable as Llama by a new run with lever=[rmsnorm,swiglu]; as GPT-2 by a new run without "
                "lever=rope"), e.value
        assert not list((tmp_path / "run").glob("*.gguf")) and not (tmp_path / "run/hf").exists()


def test_an_export_refusal_names_the_levers_or_settings_that_would_make_the_model_exportable():
    from gptlab.export import exportable_with

    relu = GPTConfig(vocab_size=65, activation="relu")  # the README's first model: GPT-2's layout with ReLU
    assert exportable_with(relu, gguf=True) == (" | exportable as Llama by a new run with lever=[rope,rmsnorm,swiglu]; "
                                                "as GPT-2 by a new run with model.activation=gelu")
    capped = GPTConfig(vocab_size=65, **LEVERS["modern"])  # softcap on: no layout has it
    assert exportable_with(capped, gguf=False).startswith(" | exportable as Llama by a new run without lever=softcap;")


@pytest.mark.parametrize("lever", [k for k in LEVERS if k != "zero_init"])
def test_a_lever_alone_is_refused_by_the_export_in_one_line(lever):
    # alone, each lever leaves GPT-2's layout, and only rope + rmsnorm + swiglu make a Llama (tests/test_hf_llama.py)
    with pytest.raises(ConfigError, match=r"^model\.\w+=\S+ cannot be exported: (GPT-2|Llama and Qwen3) ha"):
        exporter(model(lever).config)


@pytest.mark.parametrize("bad, message", [
    (dict(n_kv_head=3), "model.n_kv_head=3 must divide model.n_head=4"),
    (dict(pos="alibi"), "model.pos='alibi' is not one of learned, rope"),
    (dict(logit_softcap=0.0), "model.logit_softcap must be > 0"),
])
def test_bad_lever_settings_are_one_line(bad, message):
    with pytest.raises(ConfigError, match=message):
        GPTConfig(vocab_size=50, n_head=4, n_embd=32, **bad)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    from gptlab.lit.optim import MuonWithAdamW
    from gptlab.model import param_groups

    m = model("modern")
    hidden, decay, no_decay = param_groups(m, hidden=True)
    blocks = {id(p) for p in m.transformer.h.parameters()}
    assert hidden["muon"] and all(p.dim() == 2 and id(p) in blocks for p in hidden["params"])
    assert {id(m.transformer.wte.weight), id(m.lm_head.weight)} <= {id(p) for p in decay["params"]}
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert sum(len(g["params"]) for g in (hidden, decay, no_decay)) == len(list(m.parameters()))
    opt = MuonWithAdamW(param_groups(m, hidden=True), lr=1e-3, betas=[0.9, 0.99], eps=1e-8, weight_decay=0.1,
                        muon_lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, muon_weight_decay=0.0)
    assert [g["name"] for g in opt.param_groups] == ["hidden", "decay", "no_decay"]
    assert opt.param_groups[0] is opt.muon.param_groups[0]  # the schedule's lr reaches Muon itself
    assert [g["lr"] for g in opt.param_groups] == [0.02, 1e-3, 1e-3]


def test_muon_under_fsdp_is_one_line(cfg_factory):
    from gptlab.errors import GptlabError
    from gptlab.train import build

    with pytest.raises(GptlabError, match="optim=muon cannot run under FSDP"):
        build(cfg_factory("optim=muon", "trainer.strategy=fsdp"))


def test_muon_takes_a_recipe_written_for_adamw(cfg_factory):
    from gptlab.train import build

    # the recipe's AdamW settings (lr 5e-3, foreach) become those of Muon's AdamW part; Muon keeps its own lr
    trainer, module, _ = build(cfg_factory("experiment=shakespeare_cpu", "optim=muon"))
    keywords = module.optimizer_factory.keywords
    assert keywords["foreach"] is True and keywords["lr"] == 5e-3 and keywords["muon_lr"] == 0.02


@pytest.mark.parametrize("ns_dtype", [torch.bfloat16, torch.float32])
def test_stacked_muon_takes_the_step_torch_muon_takes_and_shares_its_state(ns_dtype):
    """gptlab's Muon orthogonalises the updates of one shape together (and in float32 where bf16 matmuls are
    slow): the update of torch's own step up to bf16's rounding, the same state, so a checkpoint moves between
    them and between the two kinds of machine."""
    from gptlab.lit.optim import StackedMuon

    torch.manual_seed(0)
    weights = [torch.randn(48, 16), torch.randn(16, 64), torch.randn(16, 48), torch.randn(64, 16)]  # 3 shapes
    grads = [[torch.randn_like(w) for w in weights] for _ in range(3)]
    params, opts = {}, {}
    for kind, make in (("torch", torch.optim.Muon), ("stacked", partial(StackedMuon, ns_dtype=ns_dtype))):
        params[kind] = [torch.nn.Parameter(w.clone()) for w in weights]
        opts[kind] = make(params[kind], lr=0.02, weight_decay=0.01, momentum=0.95, nesterov=True)
        for step in grads:
            for p, g in zip(params[kind], step):
                p.grad = g.clone()
            opts[kind].step()
    for a, b, w in zip(params["torch"], params["stacked"], weights):
        moved = (a - w).norm()
        assert moved > 0.05 and (a - b).norm() < 0.03 * moved  # bf16 keeps ~3 significant digits
    state = opts["torch"].state_dict()
    opts["stacked"].load_state_dict(state)
    assert opts["stacked"].state_dict()["state"].keys() == state["state"].keys() == {0, 1, 2, 3}


def test_a_modern_model_is_fine_tuned_into_a_chat_model_and_answers(cfg_factory, tmp_path):
    """init_from a run with the levers, SFT on conversations (the vocabulary grows by the chat markers, the head
    untied), then a chat answer through the KV cache: each lever goes wherever a model goes."""
    import json

    from gptlab.model.chat import reply
    from gptlab.model.sampling import SamplingConfig
    from gptlab.train import train

    levers = "lever=[rope,rmsnorm,qk_norm,swiglu,gqa,softcap,untied,muon]"
    train(cfg_factory(levers, "trainer.max_steps=3", "sample_tokens=0", out="base"))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {k} + 1?"},
                                                      {"role": "assistant", "content": str(k + 1)}]}) + "\n"
                             for k in range(40)))
    train(cfg_factory("data=chat", f"data.path={tasks}", f"init_from={tmp_path / 'base'}", "lever=[muon]",
                      "trainer.max_steps=3", "sample_tokens=4", out="sft"))
    base, sft = checkpoint.load(tmp_path / "base"), checkpoint.load(tmp_path / "sft")
    assert sft.model.config.vocab_size > base.model.config.vocab_size
    assert (sft.model.config.pos, sft.model.config.n_kv_head, sft.model.config.tie_weights) == ("rope", 1, False)
    answer, _ = reply(sft.model.eval(), sft.tokenizer, [{"role": "user", "content": "What is 3 + 1?"}],
                      SamplingConfig(temperature=0.0, max_new_tokens=6))
    assert isinstance(answer, str)
