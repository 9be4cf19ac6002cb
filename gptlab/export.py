"""Export a trained model to the Hugging Face format:
`python -m gptlab.export ckpt_path=RUN_DIR out=exported/`, then `AutoModelForCausalLM.from_pretrained("exported/")`.

Writes config.json, model.safetensors, generation_config.json and the tokenizer: vocab.json + merges.txt for a
byte-level BPE, tokenizer.json for a char tokenizer. A LoRA run (finetune=lora) exports merged (the adapters folded
into the weights), or with adapter=true as two folders: base/ (the model the adapters sit on) and adapter/ (PEFT's
adapter_config.json + adapter_model.safetensors: `PeftModel.from_pretrained(base, "adapter/")`). The architecture follows the model's options: GPT-2's, or
Llama (rotary + RMSNorm + SwiGLU, grouped-query attention allowed), or Qwen3 (the same with QK-norm). Any other
combination is refused in one line naming the option, and nothing is written.

format=gguf writes one GGUF file for llama.cpp instead (weights, architecture and tokenizer, a chat model's template
too): `gptlab export ckpt_path=RUN_DIR format=gguf type=q8_0` -> RUN_DIR/model-q8_0.gguf (gptlab/model/gguf_export.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from gptlab import checkpoint, cli
from gptlab.config import to_spec
from gptlab.errors import GptlabError
from gptlab.model import GPT, ConfigError, GPTConfig, LoRAConfig
from gptlab.model.gguf_export import TYPES, check as gguf_check, gguf_module, save_gguf
from gptlab.model.hf_export import architecture, save_hf_folder, writable, write_folder
from gptlab.model.hf_gpt2 import GPT2, safetensors_module
from gptlab.model.hf_llama import LLAMA
from gptlab.model.hf_peft import adapter_files
from gptlab.model.lora import adapter_state
from gptlab.rundir import RunDir
from gptlab.tokenizers.hf_export import hf_tokenizer_files


@dataclass
class ExportConfig:
    """python -m gptlab.export: a checkpoint as a Hugging Face folder, or as one GGUF file for llama.cpp."""

    ckpt_path: str = MISSING  # a .ckpt file, or a run dir (its best checkpoint, else its last)
    out: Optional[str] = None  # the folder to write (it must not exist, or be empty); None: the run's hf/ folder
    adapter: bool = False  # a LoRA run: its base and its PEFT adapter (out/base, out/adapter; None: the run's hf-lora/)
    format: str = "hf"  # "hf": a Hugging Face folder; "gguf": one file for llama.cpp (out=FILE.gguf, a new file)
    type: str = "f32"  # format=gguf: the matrices' type, f32, f16 or q8_0 (None out: the run's model-<type>.gguf)

    def __post_init__(self) -> None:
        if self.format not in ("hf", "gguf"):
            raise GptlabError(f"format={self.format!r} is not one of hf, gguf")
        if self.format == "gguf" and self.type not in TYPES:
            raise GptlabError(f"type={self.type!r} is not one of {', '.join(TYPES)}")
        if self.format == "hf" and self.type != "f32":
            raise GptlabError(f"type={self.type} is for format=gguf: a Hugging Face folder keeps the weights' dtype")
        if self.format == "gguf" and self.adapter:
            raise GptlabError("adapter=true writes a PEFT adapter (format=hf): a GGUF export holds the merged model")


ConfigStore.instance().store(name="export_schema", node=ExportConfig)


def run(node: DictConfig) -> Path:
    cfg = to_spec(ExportConfig, node, "export")
    if cfg.format == "gguf":
        gguf_module()  # the one-line install hint before the checkpoint is read
    loaded = checkpoint.load(cfg.ckpt_path, merge=not cfg.adapter)
    if cfg.format == "gguf":
        return export_gguf(loaded, cfg)
    if cfg.adapter and not loaded.record.get("lora"):
        raise GptlabError(f"{loaded.path} holds no adapters (it was not trained with finetune=lora): "
                          "export it without adapter=true")
    try:
        arch = architecture(loaded.model.config)
    except ConfigError as e:
        raise GptlabError(f"{loaded.path}: {e}{exportable_with(loaded.model.config, gguf=False)}") from None
    eot = loaded.tokenizer.eot_id
    files = hf_tokenizer_files(loaded.tokenizer, model_max_length=loaded.model.config.block_size)
    run_dir = RunDir.of(loaded.path)
    if cfg.out is None and not run_dir.is_run():
        raise GptlabError(f"{cfg.ckpt_path} is not a gptlab run: say where to write the export, out=FOLDER")
    target = Path(cfg.out).expanduser() if cfg.out else run_dir.export_adapter if cfg.adapter else run_dir.export
    if cfg.adapter:
        return export_adapter(loaded, target, files, arch)
    out = save_hf_folder(loaded.model, target, tokenizer_files=files, eos_token_id=eot)
    print(f"{'checkpoint':<12}{loaded.path} (step {loaded.step})\n{'written':<12}{out} ({arch}): "
          f"{', '.join(sorted(p.name for p in out.iterdir()))}")
    print(f"{'load with':<12}transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return out


def lever_settings() -> dict[str, dict]:
    """Each lever's model settings, as conf/lever/ states them (rope: {"pos": "rope"}, ...)."""
    folder = resources.files("gptlab.conf").joinpath("lever")
    return {f.name[:-5]: dict(OmegaConf.create(f.read_text(encoding="utf-8")).get("model") or {})
            for f in folder.iterdir() if f.name.endswith(".yaml")}


def exportable_with(config: GPTConfig, gguf: bool) -> str:
    """" | exportable as Llama by a run with lever=[rope,rmsnorm,swiglu]; as GPT-2 with model.activation=gelu":
    what a new run would change to export as each layout, in levers where a lever sets it."""
    levers, ways = lever_settings(), []
    gpt2 = {**GPT2, "n_kv_head": config.n_head if config.n_kv_head is not None else None}
    if gguf or config.activation not in ("gelu", "relu"):  # llama.cpp's gpt2 has GELU alone
        gpt2["activation"] = "gelu"
    for layout, wants in (("Llama", LLAMA), ("GPT-2", gpt2)):
        add, drop, keys = [], [], []
        for key, want in wants.items():
            have = getattr(config, key)
            if have == want:
                continue
            setter = next((n for n, s in levers.items() if key in s and s[key] == want), None)
            holder = next((n for n, s in levers.items() if key in s and s[key] == have), None)
            if setter:
                add.append(setter)
            elif holder and want == getattr(GPTConfig, key, want):  # the lever's change undone: leave it out
                drop.append(holder)
            else:
                keys.append(f"model.{key}={want}")
        parts = ([f"with lever=[{','.join(add)}]"] if add else []) + \
            ([f"without lever={','.join(drop)}"] if drop else []) + ([f"with {' '.join(keys)}"] if keys else [])
        if parts:
            ways.append(f"as {layout} by a new run {' and '.join(parts)}")
    return " | exportable " + "; ".join(ways) if ways else ""


def export_adapter(loaded: checkpoint.Loaded, target: Path, tokenizer_files: dict[str, str], arch: str) -> Path:
    """target/base: the model the adapters sit on, as a Hugging Face folder; target/adapter: the adapters, as PEFT's."""
    base_dir, adapter_dir = writable(target / "base"), writable(target / "adapter")  # before anything is written
    state, record = loaded.model.state_dict(), loaded.record["lora"]
    lora = LoRAConfig(**record["config"])
    token_rows = None
    if lora.tokens == "all" and record["base"]:  # the base keeps its own rows; the adapter carries the trained ones
        base = checkpoint.lora_base(record, loaded.model.config, loaded.path)
        token_rows = state["transformer.wte.weight"]
    else:  # the rows of the tokens the base lacked, trained, go into the base: PEFT's base has no rows for them
        base = GPT(loaded.model.config)
        base.load_state_dict({k: v for k, v in state.items() if ".lora_" not in k})
    adapter_config, tensors = adapter_files(adapter_state(loaded.model), base.config, lora, arch, str(base_dir),
                                            token_rows)
    save_hf_folder(base, base_dir, tokenizer_files=tokenizer_files, eos_token_id=loaded.tokenizer.eot_id)
    write_folder(adapter_dir, {"adapter_config.json": json.dumps(adapter_config, indent=2) + "\n",
                               "adapter_model.safetensors": safetensors_module().save(tensors)})
    print(f"{'checkpoint':<12}{loaded.path} (step {loaded.step})\n{'written':<12}{base_dir} ({arch}), "
          f"{adapter_dir} (PEFT LoRA, rank {lora.rank}, {sum(t.numel() for t in tensors.values()):,} parameters)")
    print(f"{'load with':<12}peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(base_dir)!r}), "
          f"{str(adapter_dir)!r})")
    return target


def export_gguf(loaded: checkpoint.Loaded, cfg: ExportConfig) -> Path:
    """One GGUF file: the model (adapters merged), its architecture's metadata and its tokenizer."""
    try:
        arch, _ = gguf_check(loaded.model, loaded.tokenizer, cfg.type)
    except GptlabError as e:
        raise GptlabError(f"{loaded.path}: {e}{exportable_with(loaded.model.config, gguf=True)}") from None
    run_dir = RunDir.of(loaded.path)
    if cfg.out is None and not run_dir.is_run():
        raise GptlabError(f"{cfg.ckpt_path} is not a gptlab run: say where to write the export, out=FILE.gguf")
    target = Path(cfg.out).expanduser() if cfg.out else run_dir.gguf(cfg.type)
    out = save_gguf(loaded.model, loaded.tokenizer, target, cfg.type, name=run_dir.path.name)
    print(f"{'checkpoint':<12}{loaded.path} (step {loaded.step})\n{'written':<12}{out} (llama.cpp {arch}, "
          f"{cfg.type}, {out.stat().st_size / 2**20:,.1f} MiB)")
    print(f"{'run with':<12}llama-cli -m {out}   or   llama_cpp.Llama(model_path={str(out)!r})")
    return out


main = cli.entry(run, "export", ("ckpt_path", "out"), ExportConfig,
                 "Export a trained model (and its tokenizer) to the Hugging Face format, or to GGUF for llama.cpp.",
                 "ckpt_path=RUN_DIR [out=FOLDER] [adapter=true] [format=gguf [type=f32|f16|q8_0]]")

if __name__ == "__main__":
    main()
