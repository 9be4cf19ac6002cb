"""The LM Evaluation Harness, gptlab's adapter against the harness's own `hf` model on the same weights: the
folder `gptlab export` writes (the same model, Hugging Face's GPT2LMHeadModel). In one process, alternating.

    python scripts/bench_eval.py                          # model=small and GPT-2 124M shapes, on this machine
    python scripts/bench_eval.py --shapes small --batch-size 8 --device cuda

Random weights (speed does not depend on them). Two kinds of request, as tasks make them:
- loglikelihood: (context, continuation) pairs of Tiny Shakespeare, contexts of 20-120 words, continuations of
  1-10 words (a multiple-choice task's shape): requests/s;
- generate_until: prompts of 20-60 words, max_gen_toks new tokens each, no stop sequence met (random weights):
  new tokens/s.
Both models get the same batch size (--batch-size) and float32 weights.

Last line: `gptlab/hf ratio: R`, the smallest ratio (gptlab's speed over hf's) over shapes and kinds. The table goes
into results/<machine kind>.json (scripts/results.py; --no-record: not).
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from results import add_flag, record

SHAPES = {"small": dict(),  # model=small: GPTConfig's defaults (6 layers of 256, a block of 128)
          "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)}  # GPT-2 124M
LABELS = {"small": "model=small (6 x 256, context 128)",  # in the recorded table
          "gpt2": "GPT-2 124M (12 x 768, context 1,024, 50,257-wide head)"}


def export_random_model(shape: str, text: str, out: Path) -> Path:
    """A randomly initialised GPT of the shape and a byte-level BPE of 1,024 tokens trained on Tiny Shakespeare
    (GPT-2's own would download; its 50,257-wide head is kept in the gpt2 shape), written as the Hugging Face
    folder `gptlab export` writes."""
    from gptlab.model import GPT, GPTConfig
    from gptlab.model.hf_export import save_hf_folder
    from gptlab.tokenizers import ByteLevelBPE
    from gptlab.tokenizers.hf_export import hf_tokenizer_files

    tok = ByteLevelBPE.train(text[:300_000], vocab_size=1024, show_progress=False)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{"vocab_size": tok.vocab_size, "dropout": 0.0, **SHAPES[shape]}))
    with torch.no_grad():  # ids past the tokenizer's get logit 0, below the best real one: neither side picks them
        model.transformer.wte.weight[tok.vocab_size:] = 0.0  # (gptlab never samples them; hf would)
    files = hf_tokenizer_files(tok, model_max_length=model.config.block_size)
    return save_hf_folder(model, out / shape, tokenizer_files=files, eos_token_id=tok.eot_id)


def requests(text: str, n: int, kind: str, max_gen_toks: int) -> list:
    from lm_eval.api.instance import Instance

    words = text.split()
    rng = random.Random(0)
    out = []
    for i in range(n):
        start = rng.randrange(len(words) - 200)
        if kind == "loglikelihood":
            k = rng.randint(20, 120)
            args = (" ".join(words[start:start + k]), " " + " ".join(words[start + k:start + k + rng.randint(1, 10)]))
        else:
            args = (" ".join(words[start:start + rng.randint(20, 60)]), {"until": [], "max_gen_toks": max_gen_toks,
                                                                          "do_sample": False})
        out.append(Instance(request_type=kind, doc={}, arguments=args, idx=i))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="small,gpt2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--requests", type=int, default=64, help="loglikelihood requests per measurement")
    ap.add_argument("--prompts", type=int, default=8, help="generate_until requests per measurement")
    ap.add_argument("--max-gen-toks", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    add_flag(ap)
    args = ap.parse_args()

    import lm_eval.models.huggingface as hf

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its truncation notes, once per request

    from gptlab.data.sources import SHAKESPEARE, find_or_download
    from gptlab.harness import GptlabLM

    text = find_or_download(SHAKESPEARE.file, SHAKESPEARE.url, SHAKESPEARE.sha256, None).read_text(encoding="utf-8")
    ratios, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            folder = export_random_model(shape, text, Path(tmp))
            models = {"gptlab": GptlabLM(str(folder), device=args.device, batch_size=args.batch_size),
                      "hf": hf.HFLM(pretrained=str(folder), device=args.device, batch_size=args.batch_size,
                                    dtype="float32")}
            rows.append([LABELS.get(shape, shape)])
            agreed = True
            for kind, n in (("loglikelihood", args.requests), ("generate_until", args.prompts)):
                reqs = requests(text, n, kind, args.max_gen_toks)
                speed: dict[str, list[float]] = {name: [] for name in models}
                answers = {}
                for r in range(args.repeats + 1):  # the first round warms up
                    for name in (list(models) if r % 2 else list(models)[::-1]):  # alternating who goes first
                        method = getattr(models[name], kind)
                        start = time.perf_counter()
                        answers[name] = method(reqs, disable_tqdm=True)
                        seconds = time.perf_counter() - start
                        if kind == "generate_until":
                            work = sum(len(models["gptlab"].tok_encode(a)) for a in answers[name])
                        else:
                            work = n
                        if r:
                            speed[name].append(work / seconds)
                med = {name: statistics.median(v) for name, v in speed.items()}
                unit = "requests/s" if kind == "loglikelihood" else "new tokens/s"
                same = answers["gptlab"] == answers["hf"] if kind == "generate_until" else max(
                    abs(a[0] - b[0]) for a, b in zip(answers["gptlab"], answers["hf"])) < 1e-3
                ratios.append(med["gptlab"] / med["hf"])
                print(f"{shape} {kind}: gptlab {med['gptlab']:,.1f} {unit}, hf {med['hf']:,.1f} {unit}, "
                      f"ratio {ratios[-1]:.2f}; same answers: {same}", flush=True)
                rows[-1].append(f"{med['gptlab']:,.1f} / {med['hf']:,.1f} ({ratios[-1]:.2f}x)")
                agreed = agreed and same
            rows[-1].append("yes" if agreed else "no")
    last_line = f"gptlab/hf ratio: {min(ratios):.2f}"
    print(last_line)
    if not args.no_record:
        import lm_eval

        columns = ["shape", "loglikelihood requests/s: gptlab / hf", "generate_until new tokens/s: gptlab / hf",
                   "same answers"]
        record("eval", {"columns": columns, "rows": rows}, last_line=last_line,
               notes=f"lm-eval {lm_eval.__version__}, {args.device}, batch {args.batch_size}, "
                     f"{args.requests} loglikelihood requests, {args.prompts} prompts of {args.max_gen_toks} "
                     f"new tokens, median of {args.repeats}")


if __name__ == "__main__":
    main()
