"""A gptlab GPT as a Hugging Face folder that `AutoModelForCausalLM.from_pretrained` loads: as GPT-2 when its
options are GPT-2's, as Llama with rotary positions, RMSNorm and SwiGLU (grouped-query attention allowed), as
Qwen3 with QK-norm as well. Any other combination is refused in one line naming the option."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Optional, Union

from gptlab.errors import GptlabError
from gptlab.model import hf_gpt2, hf_llama
from gptlab.model.gpt import GPT, ConfigError, GPTConfig

PathLike = Union[str, os.PathLike]


def exporter(config: GPTConfig) -> ModuleType:
    """The module that writes this architecture's config.json and weights (hf_gpt2 or hf_llama); ConfigError
    naming the option neither layout holds (the one Llama lacks when positions are rotary, else GPT-2's)."""
    if config.vocab_size is None:
        raise ConfigError("model.vocab_size is not set: build the model before exporting it")
    for module in (hf_gpt2, hf_llama):
        if module.mismatch(config) is None:
            return module
    closest = hf_llama if config.pos == "rope" else hf_gpt2
    raise ConfigError(closest.mismatch(config))


def architecture(config: GPTConfig) -> str:
    """The Hugging Face architecture a model exports to, e.g. 'LlamaForCausalLM'."""
    return exporter(config).config_to_hf(config)["architectures"][0]


def save_hf_folder(model: GPT, out_dir: PathLike, tokenizer_files: Optional[dict[str, str]] = None,
                   eos_token_id: Optional[int] = None) -> Path:
    """Write a folder that AutoModelForCausalLM.from_pretrained loads: config.json, model.safetensors,
    generation_config.json and the tokenizer files given. bos is eos, as in GPT-2."""
    module = exporter(model.config)  # before anything touches the disk
    out = writable(out_dir)
    safetensors = hf_gpt2.safetensors_module()
    sd = module.state_dict_to_hf(model.state_dict(), model.config)
    hf_config = module.config_to_hf(model.config, eos_token_id)
    hf_config["torch_dtype"] = str(model.transformer.wte.weight.dtype).removeprefix("torch.")
    generation = {"bos_token_id": eos_token_id, "eos_token_id": eos_token_id}
    files = {**(tokenizer_files or {}),  # first: the model's own files below win over same-named ones
             "config.json": json.dumps(hf_config, indent=2) + "\n",
             "generation_config.json": json.dumps(generation, indent=2) + "\n",
             "model.safetensors": safetensors.save(sd, metadata={"format": "pt"})}
    return write_folder(out, files)


def writable(out_dir: PathLike) -> Path:
    """The folder to write, refused in one line when it holds anything already."""
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GptlabError(f"{out} already exists and is not empty: choose a new folder or delete it")
    return out


def write_folder(out: Path, files: dict[str, Union[str, bytes]]) -> Path:
    """A folder of these files, written beside the target and renamed: a crash never leaves a half-written one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, content in files.items():
            (tmp / name).write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():  # as readable as any file the user writes (safetensors writes them private)
            f.chmod(0o666 & ~umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes the folder private
        if out.exists():
            out.rmdir()  # the empty folder the check above allowed
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
