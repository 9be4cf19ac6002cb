"""GGUF export: one file for llama.cpp, read back with the gguf package always, and run by llama.cpp itself where
llama-cpp-python is installed: its tokens equal gptlab's, its greedy tokens too, its logits close (f32: GPT-2 1e-3,
its GELU goes through llama.cpp's f16 table; Llama and Qwen3 1e-4; f16 2e-2; q8_0 0.25 on logits of std 2 to 4, and
top-1 agreement >= 95% on held-out text), for byte-level BPE and char tokenizers; a chat model's template renders
gptlab's prompt and llama.cpp's chat completion is gptlab's greedy reply; what GGUF cannot hold is refused in one
line, before anything is written."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

gguf = pytest.importorskip("gguf", reason='the gguf package writes the files: pip install -e ".[gguf]"')

from gptlab import checkpoint
from gptlab.errors import GptlabError
from gptlab.export import run as export
from gptlab.model import GPT, GPTConfig, generate
from gptlab.model.gguf_export import CHAT_TEMPLATE, save_gguf
from gptlab.tokenizers import ByteLevelBPE, CharTokenizer
from gptlab.tokenizers.chat import chat_tokenizer, end_id, render

try:
    import llama_cpp
except ImportError:
    llama_cpp = None
needs_llama = pytest.mark.skipif(llama_cpp is None, reason="llama.cpp is not installed: pip install llama-cpp-python "
                                                           "(it builds llama.cpp from source)")

LLAMA = dict(pos="rope", norm_type="rmsnorm", activation="swiglu")
SHAPES = {  # the three architectures, with their options that move weights around: GQA, biases, an untied head
    "gpt2": dict(bias=True),
    "gpt2-nobias-untied": dict(bias=False, tie_weights=False),
    "llama-gqa-bias-untied": dict(LLAMA, bias=True, n_kv_head=2, tie_weights=False, rope_base=500.0),
    "qwen3-mqa": dict(LLAMA, bias=False, qk_norm=True, n_kv_head=1),
}
F32_ATOL = {"gpt2": 1e-3, "llama": 1e-4, "qwen3": 1e-4}  # gpt2: llama.cpp's CPU GELU reads an f16 table
PROMPTS = ("ROMEO:\nWhat light", "First Citizen:\nBefore we proceed any further, hear me speak.", "  O, 'tis\t42 days!\n\n")
CHARS = "\t0123456789é—\\\"'"  # a char vocabulary's characters beyond Shakespeare's: not ASCII, escaped in the file


@pytest.fixture(scope="module")
def bpe(shakespeare_text) -> ByteLevelBPE:
    return ByteLevelBPE.train(shakespeare_text[:100_000], vocab_size=320, show_progress=False)


def tiny(vocab_size: int, **options) -> GPT:
    """A small random model whose logits are spread wide (embeddings of std 0.3), so that greedy choices are clear."""
    torch.manual_seed(0)
    config = GPTConfig(**dict(vocab_size=vocab_size, block_size=96, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
                       | options)
    m = GPT(config).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("wte.weight", "lm_head.weight")):
                p.normal_(0, 0.3)
            elif name.endswith("norm.weight") or ".ln_" in name:  # gains of 1 would hide one put in the wrong place
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0, 0.05)
    return m


def arch_of(shape: str) -> str:
    return shape.split("-")[0]


# --- the file, read back with the gguf package --------------------------------------------------------------


@pytest.mark.parametrize("type", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("shape", SHAPES)
def test_the_file_holds_the_architecture_tokenizer_and_weights(tmp_path, bpe, shape, type):
    model = tiny(bpe.vocab_size + 4, **SHAPES[shape])  # 4 rows past the tokenizer: padded as unused tokens
    path = save_gguf(model, bpe, tmp_path / "m.gguf", type)
    r = gguf.GGUFReader(path)
    arch, c = arch_of(shape), model.config
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert meta["general.architecture"] == arch
    context = 256 if arch == "gpt2" else c.block_size  # GPT-2's table padded to llama.cpp's multiple of 256
    assert (meta[f"{arch}.block_count"], meta[f"{arch}.embedding_length"], meta[f"{arch}.context_length"]) == \
        (c.n_layer, c.n_embd, context)
    assert (meta[f"{arch}.attention.head_count"], meta[f"{arch}.attention.head_count_kv"]) == (c.n_head, c.kv_heads)
    assert meta[f"{arch}.feed_forward_length"] == c.mlp_hidden
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == c.vocab_size and tokens[bpe.eot_id] == "<|endoftext|>" and tokens[-1] == f"[PAD{c.vocab_size - 1}]"
    assert all(tokens[i] == spelt for spelt, i in bpe.to_dict()["vocab"].items())  # GPT-2's spelling, as vocab.json
    assert meta["tokenizer.ggml.merges"] == bpe.to_dict()["merges"]
    assert meta["tokenizer.ggml.eos_token_id"] == bpe.eot_id and meta["tokenizer.ggml.add_bos_token"] is False
    assert "tokenizer.chat_template" not in meta  # no chat markers: no template
    got = {t.name: t for t in r.tensors}
    assert ("output.weight" in got) == (not c.tie_weights)
    assert ("position_embd.weight" in got) == (arch == "gpt2")
    assert ("blk.0.attn_q_norm.weight" in got) == (arch == "qwen3")
    Q = gguf.GGMLQuantizationType
    matrix = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0}[type]
    assert got["token_embd.weight"].tensor_type == matrix
    assert got["blk.1.attn_output.weight"].tensor_type == matrix
    if type == "q8_0" and c.mlp_hidden % 32:  # rows q8_0's blocks of 32 do not divide: f16, as the converter does
        assert got["blk.1.ffn_down.weight"].tensor_type == Q.F16
    assert got["blk.1.ffn_norm.weight"].tensor_type == Q.F32  # norms and biases stay f32, as the converter keeps them
    assert [int(n) for n in got["token_embd.weight"].shape] == [c.n_embd, c.vocab_size]  # ggml's order: (in, out)
    assert [int(n) for n in got["blk.0.ffn_down.weight"].shape] == [c.mlp_hidden, c.n_embd]
    if type == "f32":  # the numbers themselves: the embedding as it is, ffn_down as gptlab's c_proj
        torch.testing.assert_close(torch.from_numpy(got["token_embd.weight"].data.copy()), model.transformer.wte.weight)
        torch.testing.assert_close(torch.from_numpy(got["blk.0.ffn_down.weight"].data.copy()),
                                   model.transformer.h[0].mlp.c_proj.weight)
        if c.bias and arch == "gpt2":  # its LayerNorm biases too (zeros where gptlab has none)
            torch.testing.assert_close(torch.from_numpy(got["output_norm.bias"].data.copy()),
                                       model.transformer.ln_f.bias)
        if arch == "gpt2":  # the position table, its last row repeated to 256
            wpe, table = model.transformer.wpe.weight, torch.from_numpy(got["position_embd.weight"].data.copy())
            torch.testing.assert_close(table, torch.cat([wpe, wpe[-1:].expand(256 - c.block_size, -1)]))


def test_a_chat_model_carries_its_template_and_end_of_turn(tmp_path, bpe):
    chat = chat_tokenizer(bpe)
    path = save_gguf(tiny(chat.vocab_size, **SHAPES["qwen3-mqa"]), chat, tmp_path / "chat.gguf", "q8_0")
    meta = {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items() if not k.startswith("GGUF.")}
    assert meta["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert meta["tokenizer.ggml.eot_token_id"] == end_id(chat) and meta["tokenizer.ggml.eos_token_id"] == chat.eot_id
    types = meta["tokenizer.ggml.token_type"]
    assert [types[i] for i in chat.special_tokens.values()] == [3] * 5  # control tokens, never made from text


def test_the_template_renders_gptlabs_conversation(bpe):
    jinja2 = pytest.importorskip("jinja2")
    chat = chat_tokenizer(bpe)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"},
                {"role": "assistant", "content": "A ghost."}, {"role": "user", "content": ""}]
    text = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(CHAT_TEMPLATE).render(
        messages=messages, add_generation_prompt=True)
    assert chat.encode(text, allowed_special="all") == render(chat, messages, reply=True)[0]


# --- refusals: one line, nothing written ------------------------------------------------------------------------


@pytest.mark.parametrize("options, named", [
    (dict(logit_softcap=30.0), "model.logit_softcap=30.0"),
    (dict(norm="post"), "model.norm='post'"),
    (dict(activation="relu"), "model.activation='relu'"),
    (dict(LLAMA, activation="relu2"), "model.activation='relu2'"),
    (dict(norm_type="rmsnorm"), "model.norm_type='rmsnorm'"),
    (dict(LLAMA, qk_norm=True, bias=True), "model.bias=True"),
])
def test_what_llama_cpp_cannot_hold_is_refused_before_writing(tmp_path, bpe, options, named):
    with pytest.raises(GptlabError, match="cannot be exported to GGUF") as e:
        save_gguf(tiny(bpe.vocab_size, **options), bpe, tmp_path / "m.gguf")
    assert named in str(e.value) and str(e.value).count("cannot be exported") == 1 and "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())


def test_a_char_tokenizer_goes_in_as_llama_cpps_longest_match_vocabulary(tmp_path):
    plain = CharTokenizer.train("First Citizen:\nBefore we proceed any further, hear me speak.\n" + CHARS)
    for tok in (plain, chat_tokenizer(plain)):
        path = save_gguf(tiny(tok.vocab_size, **LLAMA), tok, tmp_path / f"{len(tok.special_tokens)}.gguf")
        meta = {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()}
        tokens = meta["tokenizer.ggml.tokens"]
        assert meta["tokenizer.ggml.model"] == "rwkv" and "tokenizer.ggml.merges" not in meta
        assert [tokens[tok.stoi[c]] for c in "\né\\a"] == ["\\n", "\\xc3\\xa9", "\\\\", "a"]  # bytes, escaped
        assert meta.get("tokenizer.ggml.eos_token_id") == tok.special_tokens.get("<|end|>")  # none: never stops


def test_a_bpe_without_an_end_of_text_token_is_refused(tmp_path, shakespeare_text):
    bare = ByteLevelBPE.train(shakespeare_text[:20_000], vocab_size=300, special_tokens=[], show_progress=False)
    with pytest.raises(GptlabError, match="no end-of-text token"):  # llama.cpp would end at its default, id 11
        save_gguf(tiny(bare.vocab_size), bare, tmp_path / "bare.gguf")
    assert not list(tmp_path.iterdir())


def test_gptlab_export_writes_the_runs_file_and_refuses_to_overwrite(tmp_path, bpe, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint.save(run / "checkpoints" / "best.ckpt", tiny(bpe.vocab_size, **SHAPES["llama-gqa-bias-untied"]), bpe)
    out = export(OmegaConf.create({"ckpt_path": str(run), "format": "gguf", "type": "q8_0"}))
    assert out == run / "model-q8_0.gguf" and "(llama.cpp llama, q8_0" in capsys.readouterr().out
    with pytest.raises(GptlabError, match="already exists"):
        export(OmegaConf.create({"ckpt_path": str(run), "format": "gguf", "type": "q8_0"}))
    for bad, says in [({"type": "q4"}, "type='q4' is not one of f32, f16, q8_0"),
                      ({"adapter": True}, "adapter=true writes a PEFT adapter"),
                      ({"format": "onnx"}, "format='onnx' is not one of hf, gguf")]:
        with pytest.raises(GptlabError, match=says):
            export(OmegaConf.create({"ckpt_path": str(run), "format": "gguf", **bad}))
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "model-q8_0.gguf"]


# --- llama.cpp itself -------------------------------------------------------------------------------------------


def load(path, **kw):
    return llama_cpp.Llama(model_path=str(path), n_ctx=96, n_batch=96, n_threads=1, logits_all=True, verbose=False,
                           seed=0, **kw)


def f32_cache() -> dict:
    """A float32 KV cache (llama.cpp's default is f16): the f32 check compares the arithmetic, not a rounding."""
    return dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def llama_logits(llm, ids: list[int]) -> torch.Tensor:
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(llm.scores[: len(ids)].copy())


def llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    """llama.cpp's greedy continuation, one token at a time through its KV cache."""
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(llm.scores[llm.n_tokens - 1].argmax()))
        llm.eval(out[-1:])
    return out


@needs_llama
@pytest.mark.parametrize("shape", SHAPES)
def test_llama_cpp_encodes_decodes_and_continues_as_gptlab(tmp_path, bpe, shape):
    model = tiny(bpe.vocab_size, **SHAPES[shape])
    llm = load(save_gguf(model, bpe, tmp_path / "m.gguf", "f32"), **f32_cache())
    for prompt in PROMPTS:
        ids = bpe.encode(prompt)
        assert llm.tokenize(prompt.encode(), add_bos=False, special=False) == ids
        assert llm.detokenize(ids).decode() == prompt
        ours = generate(model, torch.tensor([ids]), 24, temperature=0.0)[0, len(ids):].tolist()
        assert llama_greedy(llm, ids, 24) == ours
        with torch.no_grad():
            torch.testing.assert_close(llama_logits(llm, ids + ours), model(torch.tensor([ids + ours]))[0][0],
                                       atol=F32_ATOL[arch_of(shape)], rtol=0)
    if arch_of(shape) == "gpt2":  # past block_size (96), to the padded table's end (256): no assertion stops it
        whole = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=0, n_threads=1, verbose=False)
        assert whole.n_ctx() == 256 and len(llama_greedy(whole, ids, 200)) == 200


@needs_llama
def test_the_readmes_lever_recipe_runs_in_llama_cpp_as_in_gptlab(cfg_factory, tmp_path, capsys):
    """The README's `gptlab train experiment=shakespeare_cpu 'lever=[rope,rmsnorm,swiglu,muon]'` (a few steps),
    exported by `gptlab export format=gguf`: llama.cpp's greedy continuation is gptlab's."""
    from gptlab.train import train

    train(cfg_factory("experiment=shakespeare_cpu", "lever=[rope,rmsnorm,swiglu,muon]", "trainer=cpu",
                      "trainer.precision=32-true", "trainer.max_steps=3", "trainer.max_time=null",
                      "trainer.val_check_interval=3", "sample_tokens=0"))
    out = export(OmegaConf.create({"ckpt_path": str(tmp_path / "run"), "format": "gguf"}))
    assert "(llama.cpp llama, f32" in capsys.readouterr().out
    loaded = checkpoint.load(tmp_path / "run")
    ids = loaded.tokenizer.encode("ROMEO:\nBut, soft! what light")
    ours = generate(loaded.model, torch.tensor([ids]), 24, temperature=0.0)[0, len(ids):].tolist()
    assert llama_greedy(load(out, **f32_cache()), ids, 24) == ours


@needs_llama
def test_llama_cpp_encodes_and_continues_a_char_model_as_gptlab(tmp_path, shakespeare_text):
    tok = CharTokenizer.train(shakespeare_text[:20_000] + CHARS)
    model = tiny(tok.vocab_size, **SHAPES["qwen3-mqa"])
    llm = load(save_gguf(model, tok, tmp_path / "char.gguf", "f32"), **f32_cache())
    assert llm.token_eos() == -1  # no end token: llama.cpp, like gptlab, writes as many tokens as asked
    for prompt in (*PROMPTS, 'Té — "\\x41\\n" 9'):  # a backslash and an escape's spelling are text too
        ids = tok.encode(prompt)
        assert llm.tokenize(prompt.encode(), add_bos=False, special=False) == ids
        assert llm.detokenize(ids).decode() == prompt
        ours = generate(model, torch.tensor([ids]), 24, temperature=0.0)[0, len(ids):].tolist()
        assert llama_greedy(llm, ids, 24) == ours


@needs_llama
@pytest.mark.parametrize("shape", ["gpt2", "llama-gqa-bias-untied", "qwen3-mqa"])
def test_f16_and_q8_0_stay_close_and_agree_on_held_out_text(tmp_path, bpe, shakespeare_text, shape):
    model = tiny(bpe.vocab_size, **SHAPES[shape])
    held_out = bpe.encode(shakespeare_text[-20_000:])  # the tokenizer saw the first 100,000 characters
    windows = [held_out[i : i + 96] for i in range(0, 4 * 96, 96)]
    with torch.no_grad():
        ours = torch.cat([model(torch.tensor([w]))[0][0] for w in windows])
    for type, atol in (("f16", 2e-2), ("q8_0", 0.25)):  # logits of std 2 to 4
        llm = load(save_gguf(model, bpe, tmp_path / f"{type}.gguf", type))
        theirs = torch.cat([llama_logits(llm, w) for w in windows])
        torch.testing.assert_close(theirs, ours, atol=atol, rtol=0)
        agree = (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item()
        assert agree >= 0.95, f"{type}: top-1 agreement {agree:.1%}"


@needs_llama
@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_chat_completion_through_the_files_template_is_gptlabs_reply(tmp_path, bpe, shakespeare_text, kind):
    chat = chat_tokenizer(bpe if kind == "bpe" else CharTokenizer.train(shakespeare_text[:20_000] + CHARS))
    model = tiny(chat.vocab_size, **SHAPES["llama-gqa-bias-untied"])
    llm = load(save_gguf(model, chat, tmp_path / "chat.gguf", "f32"), **f32_cache())
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What light?"}]
    prompt = render(chat, messages, reply=True)[0]
    ours = generate(model, torch.tensor([prompt]), 16, temperature=0.0, stop_token=end_id(chat))[0, len(prompt):]
    ours = ours.tolist()[: ours.tolist().index(end_id(chat))] if end_id(chat) in ours else ours.tolist()
    answer = llm.create_chat_completion(messages, temperature=0.0, max_tokens=16)
    assert llm.input_ids[: len(prompt)].tolist() == prompt  # the template rendered gptlab's prompt
    text = chat.decode_bytes(ours).decode("utf-8", errors="ignore") if kind == "bpe" else chat.decode(ours)
    assert answer["choices"][0]["message"]["content"] == text  # llama-cpp-python drops bytes that are no UTF-8
    assert answer["usage"]["completion_tokens"] == len(ours) + (len(ours) < 16)  # its <|end|> counted, if it came
