"""Export a trained model to the Hugging Face format:
`python -m gptlab.export ckpt_path=RUN_DIR out=exported/`, then `AutoModelForCausalLM.from_pretrained("exported/")`.

Writes config.json, model.safetensors, generation_config.json and the tokenizer: vocab.json + merges.txt for a
byte-level BPE, tokenizer.json for a char tokenizer. The architecture follows the model's options: GPT-2's, or
Llama (rotary + RMSNorm + SwiGLU, grouped-query attention allowed), or Qwen3 (the same with QK-norm). Any other
combination is refused in one line naming the option, and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from gptlab import checkpoint, cli
from gptlab.config import to_spec
from gptlab.errors import GptlabError
from gptlab.model import ConfigError
from gptlab.model.hf_export import architecture, save_hf_folder
from gptlab.rundir import RunDir
from gptlab.tokenizers.hf_export import hf_tokenizer_files


@dataclass
class ExportConfig:
    """python -m gptlab.export: a checkpoint as a Hugging Face folder."""

    ckpt_path: str = MISSING  # a .ckpt file, or a run dir (its best checkpoint, else its last)
    out: Optional[str] = None  # the folder to write (it must not exist, or be empty); None: the run's hf/ folder


ConfigStore.instance().store(name="export_schema", node=ExportConfig)


def run(node: DictConfig) -> Path:
    cfg = to_spec(ExportConfig, node, "export")
    loaded = checkpoint.load(cfg.ckpt_path)
    try:
        arch = architecture(loaded.model.config)
    except ConfigError as e:
        raise GptlabError(f"{loaded.path} cannot be exported: {e}") from None
    eot = loaded.tokenizer.eot_id
    files = hf_tokenizer_files(loaded.tokenizer, model_max_length=loaded.model.config.block_size)
    run_dir = RunDir.of(loaded.path)
    if cfg.out is None and not run_dir.is_run():
        raise GptlabError(f"{cfg.ckpt_path} is not a gptlab run: say where to write the export, out=FOLDER")
    target = Path(cfg.out).expanduser() if cfg.out else run_dir.export
    out = save_hf_folder(loaded.model, target, tokenizer_files=files, eos_token_id=eot)
    print(f"{'checkpoint':<12}{loaded.path} (step {loaded.step})\n{'written':<12}{out} ({arch}): "
          f"{', '.join(sorted(p.name for p in out.iterdir()))}")
    print(f"{'load with':<12}transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return out


main = cli.entry(run, "export", ("ckpt_path", "out"), ExportConfig,
                 "Export a trained model (and its tokenizer) to the Hugging Face format.",
                 "ckpt_path=RUN_DIR [out=FOLDER]")

if __name__ == "__main__":
    main()
