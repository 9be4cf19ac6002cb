"""gptlab tokenizers as Hugging Face tokenizer files, so `AutoTokenizer.from_pretrained(folder)` gives the same ids.

- ByteLevelBPE -> GPT-2's own files: vocab.json and merges.txt (the spelling `to_dict` already uses), plus
  tokenizer_config.json and special_tokens_map.json; transformers loads them as a GPT2TokenizerFast.
  One difference: Hugging Face always recognises "<|endoftext|>" written in a text, as gptlab's
  `encode(text, allowed_special="all")` (and `encode_corpus`) do; plain `encode` spells it out in bytes.
- CharTokenizer -> a `tokenizer.json` in the `tokenizers` library's format: a WordLevel vocabulary of the
  characters, a pre-tokenizer that isolates every character (newlines included) and a decoder that joins
  them with nothing between, loaded as a PreTrainedTokenizerFast.

Only JSON is written here; neither `transformers` nor `tokenizers` is needed to export.
"""

from __future__ import annotations

import json
from typing import Optional

from gptlab.tokenizers.base import Tokenizer, TokenizerError
from gptlab.tokenizers.bpe import EOT, ByteLevelBPE
from gptlab.tokenizers.char import CharTokenizer


def _json(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def hf_tokenizer_files(tokenizer: Tokenizer, model_max_length: Optional[int] = None) -> dict[str, str]:
    """File name -> text of the Hugging Face files for tokenizer; model_max_length: the model's block_size."""
    if isinstance(tokenizer, ByteLevelBPE):
        return _bpe_files(tokenizer, model_max_length)
    if isinstance(tokenizer, CharTokenizer):
        return _char_files(tokenizer, model_max_length)
    raise TokenizerError(f"no Hugging Face export for tokenizer kind {tokenizer.kind!r}: use char or bpe")


def _bpe_files(tok: ByteLevelBPE, model_max_length: Optional[int]) -> dict[str, str]:
    d = tok.to_dict()
    vocab = {**d["vocab"], **d["special_tokens"]}  # vocab.json holds the special tokens too, with their ids
    merges = "#version: 0.2\n" + "".join(m + "\n" for m in d["merges"])
    # GPT-2's convention: one token starts, ends and stands for the unknown
    specials: dict = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT} if EOT in tok.special_tokens else {}
    extra = [s for s in tok.special_tokens if s != EOT]
    if extra:
        specials["additional_special_tokens"] = extra
    config = {"tokenizer_class": "GPT2Tokenizer",
              "add_prefix_space": False,  # gptlab never adds a space before the text
              "add_bos_token": False, "errors": "replace",
              "clean_up_tokenization_spaces": False,  # decode gives the text back as it was
              **({"model_max_length": model_max_length} if model_max_length else {}), **specials}
    return {"vocab.json": _json(vocab), "merges.txt": merges, "tokenizer_config.json": _json(config),
            "special_tokens_map.json": _json(specials)}


def _char_files(tok: CharTokenizer, model_max_length: Optional[int]) -> dict[str, str]:
    tokenizer_json = {
        "version": "1.0", "truncation": None, "padding": None,
        # special tokens (a chat model's role markers) are whole tokens that text never splits into
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t, i in tok.special_tokens.items()],
        "normalizer": None,
        # "[\s\S]": any one character; "." would skip newlines
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": r"[\s\S]"}, "behavior": "Isolated", "invert": False},
        "post_processor": None,
        "decoder": {"type": "Fuse"},  # join tokens with nothing between (the default puts spaces)
        # the characters in gptlab's order, so the ids agree; no unknown token: a character outside the
        # alphabet is an error, as in gptlab
        "model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(tok.tokens)}, "unk_token": "<unk>"},
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast",
              **({"additional_special_tokens": list(tok.special_tokens)} if tok.special_tokens else {}),
              "clean_up_tokenization_spaces": False,
              **({"model_max_length": model_max_length} if model_max_length else {})}
    return {"tokenizer.json": _json(tokenizer_json), "tokenizer_config.json": _json(config)}
