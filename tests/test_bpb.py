"""Bits per byte: a loss per byte of UTF-8 text, the same scale for every tokenizer, from the exact bytes each
scored token stands for."""

from __future__ import annotations

import math

import pytest
import torch

from gptlab.tokenizers import ByteLevelBPE, CharTokenizer

TEXT = "Héllo, wörld! — naïve café: ünïcödé ✓ 日本語 emoji 🙂\n" * 4


@pytest.fixture(scope="module")
def tokenizers(hf_gpt2):
    from gptlab import pretrained

    _, gpt2, _ = pretrained.load(hf_gpt2)  # GPT-2's own tokenizer files, as gptlab reads them
    return {"char": CharTokenizer.train(TEXT), "bpe": ByteLevelBPE.train(TEXT * 5, vocab_size=300,
                                                                           show_progress=False), "gpt2": gpt2}


@pytest.mark.parametrize("kind", ["char", "bpe", "gpt2"])
def test_the_bytes_of_the_tokens_add_up_to_the_text(tokenizers, kind):
    tok = tokenizers[kind]
    table = tok.text_bytes()
    ids = tok.encode(TEXT)
    assert sum(table[i] for i in ids) == len(TEXT.encode("utf-8"))
    assert len(TEXT.encode("utf-8")) > len(TEXT)  # the text has multi-byte characters: bytes are not characters
    for special in tok.special_tokens.values():
        assert table[special] == 0  # a special token stands for no text


def test_validation_logs_bits_per_byte_from_the_scored_tokens(tokenizers):
    from gptlab.lit import GPTLitModule
    from gptlab.model import GPTConfig

    tok = tokenizers["bpe"]
    module = GPTLitModule(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16), tokenizer=tok).eval()
    ids = torch.tensor(tok.encode(TEXT)[:34])
    x, y = ids[:-1].view(1, -1)[:, :32], ids[1:].view(1, -1)[:, :32].clone()
    x, y = x.view(2, 16), y.view(2, 16)
    y[1, :4] = -1  # unscored positions (a chat prompt) count neither nats nor bytes
    logged = {}
    module.log = lambda name, value, **_: logged.__setitem__(name, float(value))  # type: ignore[method-assign]
    module.log_dict = lambda d, **_: logged.update({k: float(v) for k, v in d.items()})  # type: ignore[method-assign]
    module._trainer = type("T", (), {"sanity_checking": False, "global_step": 0})()  # what the epoch end reads
    module.validation_step((x, y), 0)
    module.on_validation_epoch_end()
    with torch.no_grad():
        logits, _ = module.model(x)
    nats = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="sum")
    size = sum(len(tok.decode_bytes([i])) for i in y.flatten().tolist() if i >= 0)
    assert logged["val/bpb"] == pytest.approx(float(nats) / math.log(2) / size, rel=1e-5)
    assert logged["val/loss"] == pytest.approx(float(nats) / int((y >= 0).sum()), rel=1e-5)
