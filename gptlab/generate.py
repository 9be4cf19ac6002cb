"""Sample text from a checkpoint: `python -m gptlab.generate ckpt_path=RUN_DIR prompt="ROMEO:"`."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from gptlab import checkpoint, cli
from gptlab.config import GenerateConfig, register_configs, to_spec
from gptlab.devices import inference_dtype, pick_device
from gptlab.errors import GptlabError
from gptlab.model import complete, prompt_ids
from gptlab.tokenizers import TokenizerError

register_configs()


def prompt_text(cfg: GenerateConfig) -> str:
    if cfg.prompt_file == "-":
        return sys.stdin.read()
    if cfg.prompt_file:
        p = Path(cfg.prompt_file).expanduser()
        if not p.is_file():
            raise GptlabError(f"prompt_file {p} does not exist")
        return p.read_text(encoding="utf-8")
    return cfg.prompt


def run(node: DictConfig) -> list[str]:
    """Generate cfg.num_samples continuations; stream a single one to stdout. Returns the texts (prompt included)."""
    cfg = to_spec(GenerateConfig, node, "generate")
    device = pick_device(cfg.device)
    loaded = checkpoint.load(cfg.ckpt_path, device=device, dtype=inference_dtype(cfg.dtype, device))
    model, tok = loaded.model, loaded.tokenizer
    print(f"[{loaded.path} (step {loaded.step}) on {device}]", file=sys.stderr)

    text = prompt_text(cfg)
    try:
        n = len(prompt_ids(tok, text))
    except TokenizerError:
        raise
    except ValueError as e:
        raise GptlabError(f"{e}: give prompt=... or prompt_file=...") from None
    if n > model.config.block_size:
        print(f"[prompt of {n} tokens cropped to the last {model.config.block_size}]", file=sys.stderr)
    stream = cfg.num_samples == 1
    if stream:
        print(text, end="", flush=True)
    on_text = (lambda piece: print(piece, end="", flush=True)) if stream else None
    samples = [text + s for s in complete(model, tok, text, cfg, cfg.num_samples, cfg.seed, on_text)]
    if stream:
        print(flush=True)
    else:
        for i, s in enumerate(samples):
            print(f"--- sample {i + 1} ---\n{s}", flush=True)
    return samples


main = cli.entry(
    run, "generate", ("prompt", "prompt_file", "ckpt_path"), GenerateConfig,
    "Sample text from a trained model (a checkpoint file or a run dir).",
    "ckpt_path=RUN_DIR [--prompt TEXT | prompt_file=FILE | prompt_file=-] [key=value ...]",
    notes="The prompt is taken as typed: --prompt O Romeo, Romeo! works as well as prompt=...; "
          "prompt_file=- reads standard input.")

if __name__ == "__main__":
    main()
