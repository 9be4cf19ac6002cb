"""Sample text from a checkpoint: `python -m gptlab.generate ckpt_path=RUN_DIR prompt="ROMEO:"`."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from gptlab import checkpoint, cli
from gptlab.config import register_configs
from gptlab.devices import pick_device
from gptlab.errors import GptlabError
from gptlab.model import generate
from gptlab.model.sampling import check_sampling

register_configs()
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def prompt_text(cfg: DictConfig) -> str:
    if cfg.prompt_file:
        p = Path(cfg.prompt_file).expanduser()
        if not p.is_file():
            raise GptlabError(f"prompt_file {p} does not exist")
        return p.read_text(encoding="utf-8")
    return cfg.prompt


def run(cfg: DictConfig) -> list[str]:
    """Generate cfg.num_samples continuations; stream a single one to stdout. Returns the texts."""
    try:
        check_sampling(cfg.temperature, cfg.top_k, cfg.top_p)
    except ValueError as e:
        raise GptlabError(str(e)) from None
    if cfg.max_new_tokens < 0 or cfg.num_samples < 1:
        raise GptlabError("max_new_tokens must be >= 0 and num_samples >= 1")
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        raise GptlabError(f"dtype={cfg.dtype} is not one of {', '.join(DTYPES)}")
    device = pick_device(cfg.device)
    loaded = checkpoint.load(cfg.ckpt_path, map_location=str(device))
    model, tok = loaded.model, loaded.tokenizer
    if cfg.dtype:
        model.to(DTYPES[cfg.dtype])
    print(f"[{loaded.path} (step {loaded.step}) on {device}]", file=sys.stderr)

    text = prompt_text(cfg)
    ids = tok.encode(text) if text else []
    if not ids:
        if tok.eot_id is None:
            raise GptlabError("the prompt is empty and this tokenizer has no start token: give prompt=... or prompt_file=...")
        ids = [tok.eot_id]
    if len(ids) > model.config.block_size:
        print(f"[prompt of {len(ids)} tokens cropped to the last {model.config.block_size}]", file=sys.stderr)
    idx = torch.tensor([ids] * cfg.num_samples, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)

    stream = cfg.num_samples == 1
    decoder = tok.decoder()
    if stream:
        print(text, end="", flush=True)

    def on_token(nxt: torch.Tensor) -> None:
        if stream and int(nxt[0, 0]) != tok.eot_id:
            print(decoder.push(int(nxt[0, 0])), end="", flush=True)

    out = generate(model, idx, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                   generator=gen, use_cache=cfg.use_cache, stop_token=tok.eot_id, on_token=on_token,
                   vocab_size=tok.vocab_size)
    samples = []
    for row in out.tolist():
        new = row[len(ids):]
        if tok.eot_id is not None and tok.eot_id in new:
            new = new[: new.index(tok.eot_id)]
        samples.append(text + tok.decode(new))
    if stream:
        print(decoder.flush(), flush=True)
    else:
        for i, s in enumerate(samples):
            print(f"--- sample {i + 1} ---\n{s}", flush=True)
    return samples


@hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name="generate")
@cli.reports_errors
def _main(cfg: DictConfig) -> None:
    run(cfg)


def main() -> None:
    cli.run(_main)


if __name__ == "__main__":
    main()
