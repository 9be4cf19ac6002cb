"""Look inside a trained model: `python -m gptlab.inspect ckpt_path=RUN_DIR prompt="ROMEO: What light"`.

For one prompt it writes the attention maps of every layer and head as a PNG grid (tokens on both axes; needs
matplotlib, the `viz` extra) and as a self-contained HTML page, and prints what each head mostly does and
the causal-mask check. The files go to `<run>/inspect/` (or `out=FOLDER`), named after the checkpoint and
the prompt: inspecting the same prompt again replaces its own files and nothing else.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from gptlab import checkpoint, cli, generate
from gptlab.config import register_configs, to_spec
from gptlab.devices import pick_device
from gptlab.errors import GptlabError
from gptlab.rundir import RunDir
from gptlab.viz import (attention_maps, causal_leak, format_summary, head_summary, save_html, save_png, shorten,
                        token_labels, top_predictions)

VIZ_EXTRA = 'pip install -e ".[viz]"'


@dataclass
class InspectConfig:
    """python -m gptlab.inspect: attention maps of a checkpoint for one prompt."""

    ckpt_path: str = MISSING  # a .ckpt file, or a run dir (its best checkpoint, else its last)
    prompt: str = ""  # the text to look at, taken as typed (at most block_size tokens)
    prompt_file: Optional[str] = None  # read the prompt from this file instead (-: standard input)
    out: Optional[str] = None  # the folder for the PNG and HTML; None: <run>/inspect/
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:1, mps


register_configs()
ConfigStore.instance().store(name="inspect_schema", node=InspectConfig)


def out_folder(cfg: InspectConfig, ckpt: Path) -> Path:
    """out=, or the run's own folder for inspections."""
    folder = Path(cfg.out).expanduser() if cfg.out else RunDir.of(ckpt).inspections
    if folder.exists() and not folder.is_dir():
        raise GptlabError(f"out={folder} is a file: give a folder (it is created if missing)")
    return folder


def file_stem(ckpt: Path, prompt: str) -> str:
    """`best-ROMEO-What-light-1a2b3c`: readable, and unique per checkpoint and prompt (the hash tells apart
    prompts that read alike, and names the ones with no ASCII letters at all)."""
    words = re.sub(r"[^A-Za-z0-9]+", "-", prompt).strip("-")[:32].rstrip("-")
    digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:6]
    return "-".join(p for p in (ckpt.stem, words, digest) if p)


def run(node: DictConfig) -> dict[str, Optional[Path]]:
    """Write the maps for cfg.prompt and print the summary; returns the paths written ("png": None when skipped)."""
    cfg = to_spec(InspectConfig, node, "inspect")
    text = generate.prompt_text(cfg)  # type: ignore[arg-type]  # the same prompt, prompt_file fields
    if not text:
        raise GptlabError("the prompt is empty: give prompt=TEXT (or --prompt TEXT, prompt_file=FILE)")
    device = pick_device(cfg.device)
    loaded = checkpoint.load(cfg.ckpt_path, device=device)
    model, tok = loaded.model, loaded.tokenizer
    folder = out_folder(cfg, loaded.path)

    # every check comes before anything is written: a char vocabulary names the characters it lacks,
    # attention_maps refuses a prompt longer than block_size, each in one line
    ids = tok.encode(text)
    maps = attention_maps(model, ids)  # (n_layer, n_head, T, T)
    labels = token_labels(tok, ids)
    leak = causal_leak(maps)

    print(f"checkpoint  {loaded.path} (step {loaded.step}) on {device}")
    print(f"prompt      {len(ids)} {tok.kind} tokens: {' '.join(labels)}")
    print(format_summary(head_summary(maps), leak))
    stem = file_stem(loaded.path, text)
    title = f"“{shorten(' '.join(text.split()), 40)}”  ({loaded.path.name}, step {loaded.step})"
    written: dict[str, Optional[Path]] = {"png": None}
    try:  # save_png refuses (a GptlabError) only without matplotlib, which the page and the summary do not need
        written["png"] = save_png(maps, labels, folder / f"{stem}.png", title=title)
        print(f"png         {written['png']}")
    except GptlabError:
        print(f"png         skipped: matplotlib is not installed ({VIZ_EXTRA} adds it)")
    written["html"] = save_html(maps, labels, top_predictions(model, ids, tok), folder / f"{stem}.html", title)
    print(f"html        {written['html']}")
    return written


main = cli.entry(
    run, "inspect", ("prompt", "prompt_file", "ckpt_path", "out"), InspectConfig,
    "Attention maps of a trained model for one prompt: a PNG grid, an HTML page, a summary per head.",
    "ckpt_path=RUN_DIR (--prompt TEXT | prompt_file=FILE | prompt_file=-) [out=FOLDER] [key=value ...]",
    notes=f"The prompt is taken as typed: --prompt \"O Romeo, Romeo\" needs no Hydra quoting.\n"
          f"The PNG needs matplotlib ({VIZ_EXTRA}); without it the HTML page and the summary are still written.")

if __name__ == "__main__":
    main()
