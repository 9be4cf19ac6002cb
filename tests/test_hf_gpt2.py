"""Hugging Face GPT-2 interop: import (logits and greedy decoding equal transformers'), export (from_pretrained
loads every weight, same logits), tokenizer export (AutoTokenizer gives gptlab's ids), and one-line errors.
Tiny random models only; nothing is downloaded."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from gptlab.errors import GptlabError
from gptlab.model import GPT, ConfigError, GPTConfig, generate
from gptlab.model.hf_gpt2 import (
    config_from_hf,
    gpt_from_hf_folder,
    load_hf_folder,
    state_dict_from_hf,
)
from gptlab.model.hf_export import save_hf_folder
from gptlab.tokenizers import ByteLevelBPE, CharTokenizer
from gptlab.tokenizers.hf_export import hf_tokenizer_files

transformers.logging.set_verbosity_error()
VOCAB, CTX = 100, 64

SAMPLES = {
    "shakespeare": "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
    "code": "def add(a, b):\n\treturn a + b  # sum\r\n\nif __name__ == '__main__':\n    print(add(1, 2))\n",
    "accents": "Café naïve, façade, señor, Ærøskøbing — déjà vu? Ça va!",
    "cjk": "日本語のテキスト、中文文本。한국어 텍스트",
    "emoji": "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷 end",
    "spaces": "  leading, trailing   \n\n\n  many   spaces\t\ttabs ",
}


def hf_model(tie: bool = True, activation: str = "gelu_new", seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=CTX, vocab_size=VOCAB, activation_function=activation,
        tie_word_embeddings=tie, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
    )
    return GPT2LMHeadModel(config).eval()


def write_bin(model: GPT2LMHeadModel, folder: Path) -> None:
    """OpenAI's original layout: no `transformer.` prefix, causal-mask buffers saved, a pickle .bin."""
    folder.mkdir()
    (folder / "config.json").write_text(model.config.to_json_string())
    sd = {k.removeprefix("transformer."): v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    for i in range(model.config.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.ones(1, 1, CTX, CTX).tril()
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(sd, folder / "pytorch_model.bin")


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(1)
    settings = dict(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=16, dropout=0.0) | overrides
    return GPT(GPTConfig(**settings)).eval()


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


# --- import ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["safetensors", "bin", "untied", "relu"])
def test_logits_equal_transformers(tmp_path, layout):
    hf = hf_model(tie=layout != "untied", activation="relu" if layout == "relu" else "gelu_new")
    folder = tmp_path / "hf"
    if layout == "bin":
        write_bin(hf, folder)
    else:
        hf.save_pretrained(folder)
    model = gpt_from_hf_folder(folder)
    assert model.config.tie_weights == (layout != "untied")
    idx = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_greedy_decoding_equals_transformers(tmp_path):
    hf = hf_model(seed=3)
    hf.save_pretrained(tmp_path)
    model = gpt_from_hf_folder(tmp_path)
    prompt = torch.tensor([[5, 17, 42, 8, 23]])
    ours = generate(model, prompt, max_new_tokens=20, temperature=0)
    theirs = hf.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, min_new_tokens=20,
        do_sample=False, pad_token_id=VOCAB - 1,
    )
    assert ours.tolist() == theirs.tolist()


def test_state_dict_from_hf_strips_prefix_and_transposes():
    hf = hf_model()
    config = config_from_hf(hf.config.to_dict())
    sd = state_dict_from_hf(hf.state_dict(), config)
    w = hf.transformer.h[0].mlp.c_fc.weight  # Conv1D: (in, out)
    assert torch.equal(sd["transformer.h.0.mlp.c_fc.weight"], w.t())
    assert sd["lm_head.weight"] is sd["transformer.wte.weight"]


def test_state_dict_from_hf_reports_missing_and_wrong_shapes():
    hf = hf_model()
    config = config_from_hf(hf.config.to_dict())
    sd = dict(hf.state_dict())
    del sd["transformer.h.1.ln_2.bias"]
    with pytest.raises(ConfigError) as e:
        state_dict_from_hf(sd, config)
    assert "h.1.ln_2.bias" in one_line(e)
    sd = dict(hf.state_dict(), **{"transformer.wpe.weight": torch.zeros(CTX + 1, 32)})
    with pytest.raises(ConfigError) as e:
        state_dict_from_hf(sd, config)
    assert "wpe" in one_line(e)


@pytest.mark.parametrize(
    "key, value",
    [
        ("model_type", "llama"),
        ("architectures", ["LlamaForCausalLM"]),
        ("n_inner", 100),
        ("scale_attn_by_inverse_layer_idx", True),
        ("reorder_and_upcast_attn", True),
        ("activation_function", "gelu"),
        ("activation_function", "silu"),
        ("layer_norm_epsilon", 1e-6),
    ],
)
def test_config_from_hf_refuses_what_gptlab_cannot_express(key, value):
    cfg = hf_model().config.to_dict() | {key: value}
    with pytest.raises(ConfigError) as e:
        config_from_hf(cfg)
    assert key in one_line(e)


def test_config_from_hf_accepts_tanh_gelus():
    cfg = hf_model().config.to_dict()
    for act in ("gelu_new", "gelu_pytorch_tanh"):
        assert config_from_hf(cfg | {"activation_function": act}).activation == "gelu"
    config = config_from_hf(cfg | {"n_inner": 128, "resid_pdrop": 0.2})
    assert (config.block_size, config.vocab_size, config.dropout) == (CTX, VOCAB, 0.2)


# --- bad folders ----------------------------------------------------------------------------------------


def test_missing_config_json(tmp_path):
    with pytest.raises(GptlabError) as e:
        load_hf_folder(tmp_path)
    assert "config.json" in one_line(e)


def test_wrong_model_type(tmp_path):
    hf_model().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text()) | {"model_type": "llama"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptlabError) as e:
        load_hf_folder(tmp_path)
    assert "model_type" in one_line(e) and "llama" in str(e.value)


def test_missing_weights(tmp_path):
    hf_model().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(GptlabError) as e:
        load_hf_folder(tmp_path)
    assert "model.safetensors" in one_line(e)


def test_truncated_safetensors(tmp_path):
    hf_model().save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(GptlabError) as e:
        load_hf_folder(tmp_path)
    assert "model.safetensors" in one_line(e)


class _Payload:  # stands for a pickle that would run code when loaded
    def __reduce__(self):
        return (print, ("this must never run",))


def test_bin_holding_code_is_not_unpickled(tmp_path, capsys):
    hf_model().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"x": _Payload()}, protocol=2))
    with pytest.raises(GptlabError) as e:
        load_hf_folder(tmp_path)
    assert "pytorch_model.bin" in one_line(e)
    assert "must never run" not in capsys.readouterr().out


# --- export ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_export_loads_in_transformers_with_equal_logits(tmp_path, activation, bias):
    model = tiny_gpt(activation=activation, bias=bias, tie_weights=activation == "gelu")  # relu ones untied
    out = save_hf_folder(model, tmp_path / "export", eos_token_id=49)
    hf, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    idx = torch.randint(0, 50, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-5, rtol=0)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 49
    # and back: gptlab reads its own export (biases now explicit zeros)
    again = gpt_from_hf_folder(out)
    with torch.no_grad():
        torch.testing.assert_close(again(idx)[0], model(idx)[0], atol=1e-6, rtol=0)


def test_export_refuses_post_norm_and_writes_nothing(tmp_path):
    with pytest.raises(ConfigError) as e:
        save_hf_folder(tiny_gpt(norm="post"), tmp_path / "export")
    assert "norm" in one_line(e)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(GptlabError) as e:
        save_hf_folder(tiny_gpt(), tmp_path)
    assert str(tmp_path) in one_line(e)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


# --- tokenizers -----------------------------------------------------------------------------------------


def write_files(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def bpe() -> ByteLevelBPE:
    corpus = "\n".join(SAMPLES.values()) * 8 + "<|endoftext|>" + "the quick brown fox jumps over the lazy dog " * 20
    return ByteLevelBPE.train(corpus, vocab_size=400, show_progress=False)


def test_bpe_export_gives_gptlab_ids(tmp_path, bpe):
    hf = AutoTokenizer.from_pretrained(write_files(tmp_path / "tok", hf_tokenizer_files(bpe)))
    assert hf.eos_token == hf.bos_token == "<|endoftext|>" and hf.eos_token_id == bpe.eot_id
    unseen = "Zebras quietly vexed the jovial wizard: 42 × π ≈ 131.9 🦓 ĉu"
    for text in [*SAMPLES.values(), unseen]:
        assert hf.encode(text) == bpe.encode(text), text
        assert hf.decode(hf.encode(text)) == text
    # Hugging Face always reads the marker as the special token, as gptlab's corpus encoding does
    text = "one document<|endoftext|>another"
    assert hf.encode(text) == bpe.encode(text, allowed_special="all")


@pytest.mark.parametrize("loader", [AutoTokenizer, PreTrainedTokenizerFast])
def test_char_export_gives_gptlab_ids(tmp_path, loader):
    char = CharTokenizer.train("".join(SAMPLES.values()))
    hf = loader.from_pretrained(write_files(tmp_path / "tok", hf_tokenizer_files(char)))
    for text in SAMPLES.values():
        ids = hf.encode(text)
        assert ids == char.encode(text), text
        assert hf.decode(ids) == text


def test_export_with_tokenizer_generates_the_same_text(tmp_path):
    text = SAMPLES["shakespeare"] + SAMPLES["cjk"]
    char = CharTokenizer.train(text)
    model = tiny_gpt(vocab_size=char.vocab_size)
    out = save_hf_folder(model, tmp_path / "export", tokenizer_files=hf_tokenizer_files(char, model_max_length=32))
    hf, hf_tok = AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    prompt = "First 日本"
    ids = torch.tensor([char.encode(prompt)])
    ours = char.decode(generate(model, ids, max_new_tokens=12, temperature=0)[0].tolist())
    enc = hf_tok(prompt, return_tensors="pt")
    theirs = hf.generate(**enc, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    assert hf_tok.decode(theirs[0]) == ours
