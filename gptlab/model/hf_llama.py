"""gptlab GPTs built with Llama's options as Hugging Face Llama or Qwen3 folders (export).

Rotary positions, RMSNorm and a SwiGLU MLP make a Llama (grouped-query attention allowed); QK-norm as well makes
a Qwen3. The weights map one to one, renamed, two of them split by rows:
  transformer.wte -> model.embed_tokens          h.i.ln_1 -> model.layers.i.input_layernorm
  h.i.attn.c_attn -> self_attn.q_proj, k_proj, v_proj    h.i.attn.c_proj -> self_attn.o_proj
  h.i.attn.q_norm, k_norm -> self_attn.q_norm, k_norm    h.i.ln_2 -> post_attention_layernorm
  h.i.mlp.c_fc -> mlp.gate_proj, up_proj         h.i.mlp.c_proj -> mlp.down_proj    ln_f -> model.norm
Both rotate the channel pairs (i, i + hs/2) by the same angles and give k/v head j to q heads j*g .. j*g+g-1,
so nothing is permuted.
"""

from __future__ import annotations

from typing import Optional

import torch

from gptlab.model.gpt import GPTConfig

# the options a Llama has; anything else (a learned position table, a soft-cap, ...) has no place in its layout
LLAMA = {"norm": "pre", "pos": "rope", "norm_type": "rmsnorm", "activation": "swiglu", "logit_softcap": None}
RMS_EPS = 1e-6
TOP = {"transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight"}  # gptlab's RMSNorm epsilon (make_norm, the QK-norm)


def name(config: GPTConfig) -> str:
    return "Qwen3" if config.qk_norm else "Llama"


def mismatch(config: GPTConfig) -> Optional[str]:
    """The first option Llama's and Qwen3's layouts cannot hold, in one line; None: exportable."""
    for key, want in LLAMA.items():
        if getattr(config, key) != want:
            return f"model.{key}={getattr(config, key)!r} cannot be exported: Llama and Qwen3 have {key}={want!r}"
    if config.qk_norm and config.bias:
        return "model.bias=True cannot be exported: Qwen3's MLP has no biases (train with model.bias=false)"
    return None


def config_to_hf(config: GPTConfig, eos_token_id: Optional[int] = None) -> dict:
    """The config.json of a LlamaForCausalLM (Qwen3ForCausalLM with QK-norm) of the same architecture."""
    arch = name(config)
    rope = {"rope_type": "default", "rope_theta": config.rope_base}
    return {"architectures": [f"{arch}ForCausalLM"], "model_type": arch.lower(), "vocab_size": config.vocab_size,
            "hidden_size": config.n_embd, "intermediate_size": config.mlp_hidden, "num_hidden_layers": config.n_layer,
            "num_attention_heads": config.n_head, "num_key_value_heads": config.kv_heads,
            "head_dim": config.head_size, "hidden_act": "silu", "max_position_embeddings": config.block_size,
            "rms_norm_eps": RMS_EPS, "rope_theta": config.rope_base, "rope_parameters": rope,
            "attention_bias": config.bias, "attention_dropout": config.dropout, "initializer_range": 0.02,
            "tie_word_embeddings": config.tie_weights, "bos_token_id": eos_token_id, "eos_token_id": eos_token_id,
            **({"mlp_bias": config.bias} if arch == "Llama" else {"use_sliding_window": False})}


def state_dict_to_hf(sd: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """gptlab weights in Llama's (Qwen3's) names; a tied head left out, as save_pretrained leaves it."""
    C, kv = config.n_embd, config.kv_heads * config.head_size
    out = {}
    for key, t in sd.items():
        t = t.detach().cpu()
        if key == "lm_head.weight":
            if not config.tie_weights:
                out[key] = t
            continue
        if not key.startswith("transformer.h."):
            out[TOP[key]] = t
            continue
        i, rest = key.removeprefix("transformer.h.").split(".", 1)
        layer = f"model.layers.{i}."
        module, kind = rest.rsplit(".", 1)  # e.g. ("attn.c_attn", "weight")
        if module == "attn.c_attn":
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), t.split([C, kv, kv])):
                out[f"{layer}self_attn.{part}.{kind}"] = piece
        elif module == "mlp.c_fc":
            gate, up = t.chunk(2)  # gptlab's MLP computes silu(gate) * up from [gate; up]
            out[f"{layer}mlp.gate_proj.{kind}"], out[f"{layer}mlp.up_proj.{kind}"] = gate, up
        else:
            renamed = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm", "attn.c_proj": "self_attn.o_proj",
                       "attn.q_norm": "self_attn.q_norm", "attn.k_norm": "self_attn.k_norm",
                       "mlp.c_proj": "mlp.down_proj"}[module]
            out[f"{layer}{renamed}.{kind}"] = t
    return {k: v.contiguous() for k, v in out.items()}  # own storage for each piece: safetensors wants that
