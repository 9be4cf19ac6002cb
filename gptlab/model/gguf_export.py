"""A gptlab GPT and its tokenizer as one GGUF file, the format llama.cpp (and Ollama, LM Studio, ...) loads.

Written with the `gguf` package that llama.cpp publishes, the way its own convert_hf_to_gguf.py writes the same
architectures; nothing of the format is written by hand here. The architecture is the Hugging Face export's
(`hf_export.exporter`), under llama.cpp's name:

  GPT-2's layout -> `gpt2`   token_embd, position_embd, blk.i.{attn_norm, attn_qkv, attn_output, ffn_norm, ffn_up,
                             ffn_down} (weight and bias: zeros where gptlab has none), output_norm, output
  Llama's        -> `llama`  blk.i.{attn_q, attn_k, attn_v, ffn_gate, ffn_up} split from c_attn and c_fc = [gate; up]
  Qwen3's        -> `qwen3`  the same, with blk.i.attn_q_norm and attn_k_norm

Rotary positions: gptlab turns the channel pairs (i, i + hs/2) of each head, as Hugging Face does and as llama.cpp's
`qwen3` does (NEOX rope); llama.cpp's `llama` turns neighbours (2i, 2i + 1), so q's and k's rows (and biases) are
reordered per head, exactly as the converter's `LlamaModel.permute` does for Hugging Face's Llama weights.

Tensor types (`type=`): f32, f16 or q8_0 for the matrices; vectors, norms and the position table stay f32, and a
matrix whose rows q8_0's blocks of 32 do not divide goes in f16 (both as the converter does). A tied head is not
written: llama.cpp reads token_embd twice. GPT-2's position table is padded to a multiple of 256 rows
(`context_length`), so that llama.cpp never reads past it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Optional, Union

import torch

from gptlab.errors import GptlabError
from gptlab.model import hf_export, hf_gpt2
from gptlab.model.gpt import GPT, ConfigError, GPTConfig
from gptlab.model.hf_llama import RMS_EPS
from gptlab.tokenizers.base import Tokenizer
from gptlab.tokenizers.bpe import EOT, GPT2_SPLIT_PATTERN, ByteLevelBPE, token_to_str
from gptlab.tokenizers.char import CharTokenizer
from gptlab.tokenizers.chat import END, MARKERS, ROLES, has_template

if TYPE_CHECKING:
    import gguf

TYPES = ("f32", "f16", "q8_0")
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, gptlab's LayerNorm
PathLike = Union[str, os.PathLike]

# gptlab's chat template (tokenizers/chat.py: each message is its role marker, its text, <|end|>; a reply starts at
# <|assistant|>) in Jinja, as llama.cpp, llama-cpp-python and Hugging Face render a GGUF's tokenizer.chat_template
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in [" + ", ".join(f"'{r}'" for r in ROLES) + "] -%}"
    "{{- raise_exception('a message role is one of " + ", ".join(ROLES) + "') -}}"
    "{%- endif -%}"
    "{{- '<|' + message['role'] + '|>' + message['content'] + '" + END + "' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + MARKERS["assistant"] + "' -}}{%- endif -%}"
)


def gguf_module() -> ModuleType:
    try:
        import gguf
    except ImportError:
        raise GptlabError('format=gguf needs the gguf package (llama.cpp\'s writer): pip install -e ".[gguf]"') from None
    return gguf


# --- what llama.cpp can hold ----------------------------------------------------------------------------------


def architecture(config: GPTConfig) -> str:
    """llama.cpp's name for the model's architecture (gpt2, llama, qwen3); ConfigError naming the option that none of
    them holds."""
    try:
        module = hf_export.exporter(config)  # GPT-2's, Llama's or Qwen3's layout, or the option none of them has
    except ConfigError as e:
        raise ConfigError(str(e).replace("cannot be exported", "cannot be exported to GGUF", 1)) from None
    if module is hf_gpt2:
        if config.activation != "gelu":  # llama.cpp's gpt2 graph has GELU alone; Hugging Face's GPT-2 also ReLU
            raise ConfigError(f"model.activation={config.activation!r} cannot be exported to GGUF: llama.cpp's "
                              "gpt2 has GELU only, and none of its architectures has learned positions with ReLU")
        return "gpt2"
    return "qwen3" if config.qk_norm else "llama"


@dataclass
class Vocab:
    """A tokenizer as GGUF's tokenizer.* metadata."""

    model: str  # tokenizer.ggml.model: gpt2 (byte-level BPE) or rwkv (longest match)
    tokens: list[str]
    types: list[int]  # gguf.TokenType values
    merges: list[str] = field(default_factory=list)
    eos: Optional[int] = None
    eot: Optional[int] = None  # a chat model's end of turn, <|end|>
    chat_template: Optional[str] = None


def vocab(tokenizer: Tokenizer, n_vocab: int) -> Vocab:
    """The tokenizer as llama.cpp reads it, its id list padded to the model's n_vocab rows with unused entries (as
    the converter pads); GptlabError for a tokenizer llama.cpp would not use as gptlab does.

    A byte-level BPE is llama.cpp's `gpt2` tokenizer: its tokens in GPT-2's spelling, its merges, GPT-2's split rule.
    A char tokenizer is llama.cpp's `rwkv` one, which takes the longest token that the text starts with: over one
    token per character that is gptlab's encoding, whatever the characters (a BPE of single bytes would hold ASCII
    alone, and llama.cpp's gpt2 vocabulary ends generation at id 11 when the file names no end token)."""
    if tokenizer.vocab_size > n_vocab:
        raise GptlabError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {n_vocab} rows: "
                          "the checkpoint is inconsistent")
    if isinstance(tokenizer, ByteLevelBPE):
        kind, merges = "gpt2", tokenizer.to_dict()["merges"]
        spelt = {i: token_to_str(b) for i, b in tokenizer.vocab.items()}  # GPT-2's spelling: b" the" -> "Ġthe"
    elif isinstance(tokenizer, CharTokenizer):
        kind, merges = "rwkv", []
        spelt = {i: rwkv_escape(c) for c, i in tokenizer.stoi.items()}
    else:
        raise GptlabError(f"tokenizer kind {tokenizer.kind!r} cannot be exported to GGUF: use char or bpe")
    specials = {i: s for s, i in tokenizer.special_tokens.items()}
    normal, control, unused = 1, 3, 5  # gguf.TokenType's NORMAL, CONTROL, UNUSED
    tokens, types = [], []
    for i in range(n_vocab):
        if i in specials:  # never made from text: llama.cpp's control tokens
            tokens.append(specials[i])
            types.append(control)
        elif i in spelt:
            tokens.append(spelt[i])
            types.append(normal)
        else:  # a gap in a loaded vocab.json, or a row the model has beyond the tokenizer
            tokens.append(f"[PAD{i}]")
            types.append(unused)
    chat = has_template(tokenizer)
    eos = tokenizer.special_tokens.get(EOT, tokenizer.special_tokens.get(END))
    if eos is None and kind == "gpt2":  # llama.cpp would end generation at its gpt2 default, id 11
        raise GptlabError("the tokenizer has no end-of-text token (<|endoftext|>), which llama.cpp's byte-level BPE "
                          "needs: train the tokenizer with it (tokenizer.special_tokens, bpe's default)")
    return Vocab(kind, tokens, types, merges, eos=eos, eot=tokenizer.special_tokens[END] if chat else None,
                 chat_template=CHAT_TEMPLATE if chat else None)


def rwkv_escape(text: str) -> str:
    """A token's UTF-8 bytes as llama.cpp's rwkv vocabulary spells them: Python's bytes repr inside the quotes
    (\\n, \\xc3, \\\\), as the converter writes RWKV's vocabulary."""
    return repr(text.encode("utf-8"))[2:-1]


# --- the tensors ------------------------------------------------------------------------------------------------


def rope_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of q or k (or their bias) from the pairs (i, i + hs/2) of each head to neighbours (2i, 2i + 1), where
    llama.cpp's `llama` rotates them: convert_hf_to_gguf's LlamaModel.permute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensors(model: GPT, arch: str) -> dict[str, torch.Tensor]:
    """The model's weights in GGUF's names and llama.cpp's layout ((out, in) matrices, as nn.Linear holds them)."""
    c = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["transformer.wte.weight"], "output_norm.weight": sd["transformer.ln_f.weight"]}
    if "transformer.ln_f.bias" in sd:
        out["output_norm.bias"] = sd["transformer.ln_f.bias"]
    if not c.tie_weights:
        out["output.weight"] = sd["lm_head.weight"]
    kv = c.kv_heads * c.head_size
    for i in range(c.n_layer):
        h, b = f"transformer.h.{i}.", f"blk.{i}."

        def put(name: str, gptlab: str) -> None:  # a module whose weight and bias go over as they are
            out[f"{b}{name}.weight"] = sd[f"{h}{gptlab}.weight"]
            if f"{h}{gptlab}.bias" in sd:
                out[f"{b}{name}.bias"] = sd[f"{h}{gptlab}.bias"]

        put("attn_norm", "ln_1")
        put("ffn_norm", "ln_2")
        put("attn_output", "attn.c_proj")
        put("ffn_down", "mlp.c_proj")
        if arch == "gpt2":
            put("attn_qkv", "attn.c_attn")
            put("ffn_up", "mlp.c_fc")
            continue
        for kind in ("weight", "bias"):
            if f"{h}attn.c_attn.{kind}" not in sd:
                continue
            q, k, v = sd[f"{h}attn.c_attn.{kind}"].split([c.n_embd, kv, kv])
            if arch == "llama":
                q, k = rope_permute(q, c.n_head), rope_permute(k, c.kv_heads)
            out[f"{b}attn_q.{kind}"], out[f"{b}attn_k.{kind}"], out[f"{b}attn_v.{kind}"] = q, k, v
            gate, up = sd[f"{h}mlp.c_fc.{kind}"].chunk(2)  # gptlab's SwiGLU: silu(gate) * up from [gate; up]
            out[f"{b}ffn_gate.{kind}"], out[f"{b}ffn_up.{kind}"] = gate, up
        if c.qk_norm:
            out[f"{b}attn_q_norm.weight"] = sd[f"{h}attn.q_norm.weight"]
            out[f"{b}attn_k_norm.weight"] = sd[f"{h}attn.k_norm.weight"]
    if arch == "gpt2":  # llama.cpp's gpt2 has every bias; gptlab's bias=False is the same function with zeros
        wpe = sd["transformer.wpe.weight"]  # padded with its last row: see context_length()
        out["position_embd.weight"] = torch.cat([wpe, wpe[-1:].expand(context_length(c, arch) - c.block_size, -1)])
        for name, t in list(out.items()):
            bias = name.removesuffix(".weight") + ".bias"
            if name.startswith(("blk.", "output_norm")) and name.endswith(".weight") and bias not in out:
                out[bias] = torch.zeros(t.shape[0])
    return out


def context_length(config: GPTConfig, arch: str) -> int:
    """The positions the file declares. llama.cpp rounds every context up to a multiple of 256 and, unlike gptlab,
    does not slide a window: past a position table's last row it stops on an assertion. So GPT-2's table is padded
    to that multiple with its last row, the position gptlab gives the newest token once its window slides: text past
    block_size runs (off the model's training, as with rotary positions) instead of crashing."""
    return -(-config.block_size // 256) * 256 if arch == "gpt2" else config.block_size


def tensor_type(gguf: ModuleType, name: str, t: torch.Tensor, type: str) -> gguf.GGMLQuantizationType:
    """The GGML type one tensor is stored in: what the converter picks for the file type."""
    Q = gguf.GGMLQuantizationType
    if t.dim() <= 1 or name.endswith("_norm.weight") or name == "position_embd.weight":
        return Q.F32
    return {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0}[type]


# --- the file ---------------------------------------------------------------------------------------------------


def check(model: GPT, tokenizer: Tokenizer, type: str = "f32") -> tuple[str, Vocab]:
    """The architecture and the vocabulary, or the one line that says why the model cannot go into a GGUF file."""
    if type not in TYPES:
        raise GptlabError(f"type={type!r} is not one of {', '.join(TYPES)}")
    try:
        arch = architecture(model.config)
    except ConfigError as e:
        raise GptlabError(str(e)) from None
    return arch, vocab(tokenizer, model.config.vocab_size)


def save_gguf(model: GPT, tokenizer: Tokenizer, path: PathLike, type: str = "f32", name: str = "gptlab") -> Path:
    """Write the model and its tokenizer into one GGUF file; everything is checked before the file is opened, and
    the file appears whole or not at all (written beside its place, then renamed)."""
    arch, voc = check(model, tokenizer, type)
    gguf = gguf_module()
    path = Path(path).expanduser()
    if path.exists():
        raise GptlabError(f"{path} already exists: choose a new file or delete it")
    c = model.config
    weights = tensors(model, arch)

    def fill(w: gguf.GGUFWriter) -> None:
        w.add_name(name)
        w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[type])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_context_length(context_length(c, arch))
        w.add_embedding_length(c.n_embd)
        w.add_feed_forward_length(c.mlp_hidden)
        w.add_block_count(c.n_layer)
        w.add_head_count(c.n_head)
        w.add_head_count_kv(c.kv_heads)
        if arch == "gpt2":
            w.add_layer_norm_eps(LAYER_NORM_EPS)
        else:
            w.add_layer_norm_rms_eps(RMS_EPS)
            w.add_rope_freq_base(c.rope_base)
            w.add_rope_dimension_count(c.head_size)
            w.add_vocab_size(c.vocab_size)
        w.add_tokenizer_model(voc.model)
        if voc.model == "gpt2":
            w.add_tokenizer_pre("gpt-2")  # GPT-2's split rule, which gptlab's byte-level BPE uses
            # Ollama's own engine reads the split rule from here (without it, Llama 3's)
            w.add_string("tokenizer.ggml.pretokenizer", GPT2_SPLIT_PATTERN)
            w.add_token_merges(voc.merges)
        w.add_token_list(voc.tokens)
        w.add_token_types(voc.types)
        if voc.eos is not None:
            w.add_bos_token_id(voc.eos)  # GPT-2's convention: one token begins and ends; never added to a prompt
            w.add_eos_token_id(voc.eos)
        w.add_add_bos_token(False)
        w.add_add_eos_token(False)
        if voc.eot is not None:
            w.add_eot_token_id(voc.eot)
        if voc.chat_template is not None:
            w.add_chat_template(voc.chat_template)
        for key, t in weights.items():
            qtype = tensor_type(gguf, key, t, type)
            data = t.numpy()
            try:
                data = gguf.quants.quantize(data, qtype)
            except gguf.QuantError:  # rows q8_0's blocks of 32 do not divide: f16, as the converter falls back
                qtype = gguf.GGMLQuantizationType.F16
                data = gguf.quants.quantize(data, qtype)
            w.add_tensor(key, data, raw_dtype=qtype)

    def to_file(tmp: Path) -> None:
        w = gguf.GGUFWriter(tmp, arch)
        fill(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    _beside(path, to_file)
    return path


def _beside(path: Path, to_file: Callable[[Path], None]) -> None:
    """to_file(tmp) into a temporary name beside path, then renamed to it: a crash leaves no half-written model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        to_file(tmp)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # as open() would make it: mkstemp's is private
        tmp.rename(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
