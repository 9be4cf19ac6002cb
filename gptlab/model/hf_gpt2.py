"""Hugging Face GPT-2 folders <-> gptlab GPTs, in both directions, with plain PyTorch.

Import: `load_hf_folder(path)` reads a folder written by `GPT2LMHeadModel.save_pretrained` (config.json and
model.safetensors or pytorch_model.bin) into a GPTConfig and a state dict that `GPT.load_state_dict` takes.
Export: `config_to_hf` and `state_dict_to_hf`, which gptlab.model.hf_export writes as a folder that
`AutoModelForCausalLM.from_pretrained` loads.

The parameter names already match (gptlab follows GPT-2's checkpoint), so the conversion is small:
- GPT-2 stores its linear layers as `Conv1D`, a (in, out) matrix; nn.Linear holds (out, in): transpose.
- GPT2LMHeadModel prefixes the body with `transformer.`; GPT2Model and OpenAI's original files do not.
- Old files carry the causal mask as buffers (`attn.bias`, `attn.masked_bias`): not weights, skipped.
- GPT-2 always has biases; a gptlab model without them exports with zero biases, which is exact.
Anything GPT-2 and gptlab do not both express raises ConfigError naming the setting.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Optional, Union

import torch

from gptlab.errors import GptlabError
from gptlab.model.gpt import GPT, ConfigError, GPTConfig

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_MASK_BUFFER = re.compile(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$")  # not c_attn.bias: no dot before attn
# HF's tanh-approximate GELUs are gptlab's nn.GELU(approximate="tanh"); "gelu" is the exact (erf) one
ACTIVATIONS_IN = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}
ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# GPT2Config switches with the one value gptlab implements: attention scaled by 1/sqrt(head size) only,
# computed in the model's dtype, no cross-attention
FIXED_FLAGS = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
               "reorder_and_upcast_attn": False, "add_cross_attention": False}  # fmt: skip
PathLike = Union[str, os.PathLike]


def config_from_hf(cfg: dict) -> GPTConfig:
    """A GPTConfig from a Hugging Face GPT-2 config.json dict; ConfigError for what gptlab cannot express."""

    def refuse(key: str, why: str) -> ConfigError:
        return ConfigError(f"config.json {key}={cfg.get(key)!r}: {why}")

    if cfg.get("model_type", "gpt2") != "gpt2":
        raise refuse("model_type", "only GPT-2 ('gpt2') folders can be loaded")
    if any(a not in ARCHITECTURES for a in cfg.get("architectures") or []):
        raise refuse("architectures", f"only {' or '.join(ARCHITECTURES)} can be loaded")
    for key in ("n_embd", "n_layer", "n_head", "n_positions", "vocab_size"):
        if not isinstance(cfg.get(key), int):
            raise refuse(key, "must be an integer")
    act = cfg.get("activation_function", "gelu_new")
    if act == "gelu":
        raise refuse("activation_function", "the exact (erf) GELU; gptlab's GELU is the tanh one ('gelu_new')")
    if act not in ACTIVATIONS_IN:
        raise refuse("activation_function", f"gptlab knows {', '.join(ACTIVATIONS_IN)}")
    if cfg.get("n_inner") not in (None, 4 * cfg["n_embd"]):
        raise refuse("n_inner", f"gptlab's MLP is 4 * n_embd = {4 * cfg['n_embd']} wide")
    for key, gptlab_value in FIXED_FLAGS.items():
        if bool(cfg.get(key, gptlab_value)) != gptlab_value:
            raise refuse(key, f"gptlab supports only {str(gptlab_value).lower()}")
    if not math.isclose(float(cfg.get("layer_norm_epsilon", 1e-5)), 1e-5, rel_tol=1e-2):
        raise refuse("layer_norm_epsilon", "gptlab's LayerNorm uses 1e-5")
    return GPTConfig(vocab_size=cfg["vocab_size"], block_size=cfg["n_positions"], n_layer=cfg["n_layer"],
                     n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                     dropout=float(cfg.get("resid_pdrop", 0.1)),  # gptlab has one rate; GPT-2 sets all three alike
                     bias=True, activation=ACTIVATIONS_IN[act], norm="pre",
                     tie_weights=bool(cfg.get("tie_word_embeddings", True)))


def _few(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")


def state_dict_from_hf(sd: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """A Hugging Face GPT-2 state dict (with or without the `transformer.` prefix) in gptlab's names and layout."""
    out = {}
    for key, t in sd.items():
        if _MASK_BUFFER.search(key):
            continue
        name = key if key == "lm_head.weight" else "transformer." + key.removeprefix("transformer.")
        out[name] = t.t().contiguous() if name.endswith(CONV1D) else t
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        expected = {k: v.shape for k, v in GPT(config).state_dict().items()}
    if config.tie_weights and "transformer.wte.weight" in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]  # tied: the head is the embedding
    if missing := expected.keys() - out.keys():
        raise ConfigError(f"GPT-2 weights lack {_few(missing)}")
    if unexpected := out.keys() - expected.keys():
        raise ConfigError(f"GPT-2 weights have unexpected {_few(unexpected)}")
    if wrong := [f"{k} {tuple(out[k].shape)} != {tuple(s)}" for k, s in expected.items() if out[k].shape != s]:
        raise ConfigError(f"GPT-2 weights do not fit the config: {_few(wrong)}")
    return out


def safetensors_module():
    try:
        import safetensors.torch
    except ImportError:
        raise GptlabError("model.safetensors needs the safetensors package: pip install safetensors") from None
    return safetensors.torch


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return safetensors_module().load_file(str(path))
        sd = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no code is unpickled
    except GptlabError:
        raise
    except Exception as e:
        why = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise GptlabError(f"{path} cannot be read ({why}): it is truncated, corrupt or not plain tensors; "
                          "save or download it again") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise GptlabError(f"{path} holds no state dict of tensors: save the model with save_pretrained")
    return sd


def load_hf_folder(path: PathLike) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """GPTConfig and gptlab state dict of a folder saved by GPT2LMHeadModel.save_pretrained."""
    folder = Path(path).expanduser()
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise GptlabError(f"no {cfg_file}: give a folder written by save_pretrained (config.json + model.safetensors)")
    try:
        config = config_from_hf(json.loads(cfg_file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GptlabError(f"{cfg_file} is not valid JSON ({e}): save the model again") from None
    except ConfigError as e:
        raise GptlabError(f"{cfg_file}: {str(e).removeprefix('config.json ')}") from None
    files = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()][:1]
    for index in (folder / f"{name}.index.json" for name in WEIGHT_FILES):  # a sharded checkpoint
        if not files and index.is_file():
            files = [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if not files:
        raise GptlabError(f"no model.safetensors or pytorch_model.bin in {folder}: save the weights there too")
    sd = {k: v for f in files for k, v in _read_weights(f).items()}
    try:
        return config, state_dict_from_hf(sd, config)
    except ConfigError as e:
        raise GptlabError(f"{files[0]}: {e}") from None


def gpt_from_hf_folder(path: PathLike) -> GPT:
    """A gptlab GPT with the weights of a Hugging Face GPT-2 folder, in eval mode."""
    config, sd = load_hf_folder(path)
    model = GPT(config)
    model.load_state_dict(sd)
    return model.eval()


# the options GPT-2's layout has (and activation gelu or relu); the levers of later models have no place in it
GPT2 = {"norm": "pre", "pos": "learned", "norm_type": "layernorm", "qk_norm": False, "n_kv_head": None,
        "logit_softcap": None}


def mismatch(config: GPTConfig) -> Optional[str]:
    """The first option GPT-2's layout cannot hold, in one line; None: exportable as GPT-2.
    (bias=False exports as zero biases and tie_weights=False as a separate lm_head.weight: both exact.)"""
    if config.norm != "pre":
        return f"model.norm={config.norm!r} cannot be exported: GPT-2 is pre-norm (norm='pre') only"
    for name, gpt2 in GPT2.items():  # the levers of later models: GPT-2's layout has no place for them
        if name != "norm" and getattr(config, name) != gpt2 and not (name == "n_kv_head" and config.kv_heads == config.n_head):
            return f"model.{name}={getattr(config, name)!r} cannot be exported: GPT-2 has {name}={gpt2!r}"
    if config.activation not in ("gelu", "relu"):
        return f"model.activation={config.activation!r} cannot be exported: GPT-2 has gelu (or relu)"
    return None


def config_to_hf(config: GPTConfig, eos_token_id: Optional[int] = None) -> dict:
    """The config.json of a GPT2LMHeadModel with the same architecture."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.block_size, "n_embd": config.n_embd, "n_layer": config.n_layer,
            "n_head": config.n_head, "n_inner": None,  # None: 4 * n_embd
            "activation_function": "gelu_new" if config.activation == "gelu" else "relu",
            "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
            "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, **FIXED_FLAGS,
            "tie_word_embeddings": config.tie_weights, "bos_token_id": eos_token_id, "eos_token_id": eos_token_id}


def state_dict_to_hf(sd: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """gptlab weights as GPT2LMHeadModel saves them: Conv1D layout, zero biases where gptlab has none, a tied
    head left out (as save_pretrained does; GPT2LMHeadModel ties it again on load)."""
    out = {}
    for key, t in sd.items():
        if key == "lm_head.weight" and config.tie_weights:
            continue
        t = t.detach().cpu()
        out[key] = (t.t() if key.endswith(CONV1D) else t).contiguous()  # contiguous: own storage for safetensors
        bias = key.removesuffix(".weight") + ".bias"  # bias=False: GPT-2 adds zeros, the same function
        if key.startswith(("transformer.h.", "transformer.ln_f.")) and key.endswith(".weight") and bias not in sd:
            out[bias] = torch.zeros(t.shape[0], dtype=t.dtype)
    return out
