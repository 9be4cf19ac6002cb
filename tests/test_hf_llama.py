"""Export to Llama and Qwen3: a gptlab GPT with rotary positions, RMSNorm and SwiGLU (and QK-norm) loads with
AutoModelForCausalLM as that architecture, every weight used, with gptlab's logits and greedy tokens; any other
combination is refused in one line naming the option, and nothing is written."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from transformers import AutoModelForCausalLM, AutoTokenizer

from gptlab.model import GPT, ConfigError, GPTConfig, generate
from gptlab.model.hf_export import exporter, save_hf_folder
from gptlab.tokenizers import CharTokenizer
from gptlab.tokenizers.hf_export import hf_tokenizer_files

transformers.logging.set_verbosity_error()
LLAMA = dict(pos="rope", norm_type="rmsnorm", activation="swiglu")


def tiny(**options) -> GPT:
    torch.manual_seed(3)
    config = GPTConfig(**dict(vocab_size=61, block_size=48, n_layer=2, n_head=4, n_embd=32, dropout=0.0) | options)
    m = GPT(config).eval()
    with torch.no_grad():  # norm gains of 1 would hide a gain exported to the wrong place
        for name, p in m.named_parameters():
            if name.endswith("norm.weight") or ".ln_" in name:
                p.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("options, arch", [
    (dict(LLAMA, bias=False), "LlamaForCausalLM"),
    (dict(LLAMA, bias=True, tie_weights=False, n_kv_head=2, rope_base=500.0), "LlamaForCausalLM"),
    (dict(LLAMA, bias=False, qk_norm=True, n_kv_head=1), "Qwen3ForCausalLM"),
    (dict(LLAMA, bias=False, qk_norm=True, tie_weights=False, zero_init=True), "Qwen3ForCausalLM"),
], ids=["llama", "llama-gqa-bias-untied", "qwen3-mqa", "qwen3-untied"])
def test_export_loads_as_the_architecture_with_equal_logits(tmp_path, options, arch):
    model = tiny(**options)
    if model.config.zero_init:  # zero projections would make the check blind to them
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("c_proj.weight"):
                    p.normal_(0, 0.05)
    out = save_hf_folder(model, tmp_path / "export", eos_token_id=60)
    assert json.loads((out / "config.json").read_text())["architectures"] == [arch]
    hf, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert type(hf).__name__ == arch
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    idx = torch.randint(0, 61, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], atol=2e-5, rtol=0)
    prompt = idx[:1, :8]
    ours = generate(model, prompt, max_new_tokens=12, temperature=0.0)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, min_new_tokens=12,
                         do_sample=False, pad_token_id=0)
    assert torch.equal(theirs, ours)


def test_a_char_model_and_its_tokenizer_generate_the_same_text_in_transformers(tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    char = CharTokenizer.train(text)
    model = tiny(**LLAMA, bias=False, qk_norm=True, vocab_size=char.vocab_size)
    files = hf_tokenizer_files(char, model_max_length=48)
    out = save_hf_folder(model, tmp_path / "export", tokenizer_files=files)
    hf, tok = AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    prompt = "Before we"
    ours = char.decode(generate(model, torch.tensor([char.encode(prompt)]), 10, temperature=0.0)[0].tolist())
    enc = tok(prompt, return_tensors="pt")
    theirs = hf.generate(**enc, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0)
    assert tok.decode(theirs[0]) == ours


@pytest.mark.parametrize("options, named", [
    (dict(pos="rope"), "model.norm_type='layernorm' cannot be exported: Llama and Qwen3 have norm_type='rmsnorm'"),
    (dict(pos="rope", norm_type="rmsnorm", activation="relu2"), "model.activation='relu2' cannot be exported"),
    (dict(LLAMA, logit_softcap=30.0), "model.logit_softcap=30.0 cannot be exported"),
    (dict(LLAMA, norm="post"), "model.norm='post' cannot be exported"),
    (dict(LLAMA, qk_norm=True, bias=True), "model.bias=True cannot be exported: Qwen3's MLP has no biases"),
    (dict(norm_type="rmsnorm", activation="swiglu"), "model.norm_type='rmsnorm' cannot be exported: GPT-2 has"),
])
def test_other_combinations_are_refused_in_one_line_and_nothing_is_written(tmp_path, options, named):
    with pytest.raises(ConfigError) as e:
        save_hf_folder(tiny(**options), tmp_path / "export")
    assert named in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_gpt2_options_still_export_as_gpt2():
    assert exporter(tiny().config).__name__ == "gptlab.model.hf_gpt2"
    assert exporter(tiny(**LLAMA).config).__name__ == "gptlab.model.hf_llama"


def test_a_trained_run_exports_as_qwen3_through_gptlab_export(cfg_factory, tmp_path, capsys):
    from omegaconf import OmegaConf

    from gptlab import checkpoint, export
    from gptlab.train import train

    options = dict(LLAMA, qk_norm=True, bias=False, n_kv_head=2, n_head=4)
    train(cfg_factory(*(f"model.{k}={v}" for k, v in options.items()), "trainer.max_steps=3", "sample_tokens=0"))
    out = export.run(OmegaConf.create({"ckpt_path": str(tmp_path / "run"), "out": str(tmp_path / "qwen")}))
    assert "(Qwen3ForCausalLM)" in capsys.readouterr().out
    loaded = checkpoint.load(tmp_path / "run")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([loaded.tokenizer.encode("ROMEO:\nWhat light")])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, loaded.model.eval()(ids)[0], atol=2e-5, rtol=0)
