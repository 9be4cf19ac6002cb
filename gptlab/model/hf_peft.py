"""A gptlab model's LoRA adapters as a PEFT adapter folder (adapter_config.json + adapter_model.safetensors), which
`peft.PeftModel.from_pretrained(base, folder)` puts on the base's Hugging Face export.

PEFT keeps, for each adapted module, lora_A (r, in) and lora_B (out, r), and adds (alpha / r) * B A x to its
output, as gptlab does. GPT-2's modules are gptlab's (PEFT's GPT-2 adapters use the same names; Conv1D's layout
changes nothing for A and B). Llama and Qwen3 split what gptlab keeps fused: q, k and v (attn.c_attn), gate and up
(mlp.c_fc). A fused adapter B A splits exactly: each part keeps the same A and takes its rows of B.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from gptlab.model.gpt import GPTConfig
from gptlab.model.lora import LoRAConfig

LLAMA_TARGETS = {"attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                 "attn.c_proj": ("self_attn.o_proj",), "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj"),
                 "mlp.c_proj": ("mlp.down_proj",)}


def adapter_files(adapters: dict[str, torch.Tensor], config: GPTConfig, lora: LoRAConfig, architecture: str,
                  base: str, token_rows: Optional[torch.Tensor] = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config.json's contents, adapter_model.safetensors' tensors) for the adapters of a model of
    `config` (state_dict names: transformer.h.0.attn.c_attn.lora_A, ...) exported as `architecture`
    (GPT2LMHeadModel, LlamaForCausalLM, Qwen3ForCausalLM); base: the base's folder, as PEFT records it.
    token_rows: the trained rows of the token table (lora.tokens=all), as PEFT's trainable tokens, which replace
    those rows of the base's input embedding (and of a head tied to it) by their trained values."""
    gpt2 = architecture == "GPT2LMHeadModel"
    C, kv, hidden = config.n_embd, config.kv_heads * config.head_size, config.mlp_hidden
    tensors = {}
    for key, t in adapters.items():
        t = t.detach().cpu().float()
        i, rest = key.removeprefix("transformer.h.").split(".", 1)
        module, kind = rest.rsplit(".", 1)  # ("attn.c_attn", "lora_A")
        if gpt2:
            tensors[f"base_model.model.transformer.h.{i}.{module}.{kind}.weight"] = t.contiguous()
            continue
        names = LLAMA_TARGETS[module]
        sizes = {"attn.c_attn": [C, kv, kv], "mlp.c_fc": [hidden, hidden]}.get(module, [t.shape[0]])
        pieces = [t] * len(names) if kind == "lora_A" else t.split(sizes)  # A shared, B by rows
        for name, piece in zip(names, pieces):  # each its own copy: safetensors stores no shared memory
            tensors[f"base_model.model.model.layers.{i}.{name}.{kind}.weight"] = piece.clone()
    targets = list(lora.targets) if gpt2 else [n for t in lora.targets for n in LLAMA_TARGETS[t]]
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "target_modules": targets,
        "fan_in_fan_out": gpt2,  # GPT-2's Conv1D holds its matrices (in, out)
        "bias": "none", "inference_mode": True, "modules_to_save": None, "use_rslora": False, "use_dora": False,
    }
    if token_rows is not None:
        table = "transformer.wte" if gpt2 else "model.embed_tokens"
        adapter_config["trainable_token_indices"] = {table.rsplit(".", 1)[1]: list(range(len(token_rows)))}
        tensors[f"base_model.model.{table}.token_adapter.trainable_tokens_delta"] = token_rows.detach().cpu().float() \
            .contiguous()  # PEFT's name; the rows' values, not a difference
    return adapter_config, tensors

