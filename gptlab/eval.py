"""Evaluate a checkpoint: `python -m gptlab.eval ckpt_path=RUN_DIR [data.path=other.txt] [whole_split=true]`, or
on tasks of the LM Evaluation Harness: `... tasks=hellaswag,arc_easy [num_fewshot=0 limit=100 include_path=DIR]`.

Loss (nats per token), perplexity and bits per character and per byte, computed as the LightningModule's
validation step computes them (gptlab/lit/metrics.py, which both use), so eval and training mean the same thing by
val/loss; without Lightning, which this command never imports (the harness aside). By default it scores the windows
the run's validation scored (its trainer.limit_val_batches, batch size and precision), so the figure
equals the one the run logged; `whole_split=true` scores every window of the split; `data.path=` scores
every window of another text, encoded with the checkpoint's tokenizer. The table is printed and written
as JSON next to the checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterable, Optional

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from gptlab import checkpoint, cli
from gptlab.config import EvalConfig, register_configs, to_spec, tokenizer_spec
from gptlab.data import DataConfig, DataError, FixedWindows, TokenFiles, encode, open_tokens, read_text
from gptlab.devices import auto_precision, has_fast_bf16, pick_device
from gptlab.errors import GptlabError
from gptlab.lit.metrics import ValTotals, batch_figures, byte_table
from gptlab.lit.trainer import TrainerConfig
from gptlab.model import GPT
from gptlab.rundir import RunDir
from gptlab.tokenizers import Tokenizer

register_configs()


def run(node: DictConfig) -> dict:
    cfg = to_spec(EvalConfig, node, "eval")
    if cfg.tasks:
        return run_harness(cfg)
    device = pick_device(cfg.device)
    loaded = checkpoint.load(cfg.ckpt_path)
    run_cfg = loaded.config
    trained = TrainerConfig(**{k: v for k, v in (run_cfg.get("trainer") or {}).items()
                               if k in TrainerConfig.__dataclass_fields__ and k in ("precision", "limit_val_batches")})
    if cfg.data.kind == "chat" or (not cfg.data.path and (run_cfg.get("data") or {}).get("kind") == "chat"):
        return run_chat(cfg, loaded, device, trained)
    block = loaded.model.config.block_size
    if cfg.data.path:
        text = read_text(Path(cfg.data.path))
        tokens = encode(loaded.tokenizer, text)
        if len(tokens) < block + 1:
            raise DataError(f"{cfg.data.path} has {len(tokens)} tokens, fewer than the model's block_size+1")
        tokens_per_char, batch_size = len(tokens) / len(text), cfg.data.batch_size or 32
        windows = FixedWindows(tokens, block)
        limit, name = 1.0, str(cfg.data.path)
    else:
        files, spec = own_split(loaded, cfg)
        tokens_per_char, batch_size = loaded.record["val_tokens_per_char"], spec.val_batch_size or spec.batch_size
        windows = FixedWindows(files.val, block)  # the windows the run's validation scored, in its order
        name, limit = "val split", 1.0 if cfg.whole_split else trained.limit_val_batches
    loader = DataLoader(windows, batch_size=batch_size, shuffle=False)
    batches = val_batches(len(loader), limit)
    metrics = score(loaded.model, loaded.tokenizer, loader, batches, validator(device, trained.precision),
                    tokens_per_char)
    scored = min(batches * batch_size, len(windows))
    result = {"checkpoint": str(loaded.path), "step": loaded.step, "data": name, "windows": scored,
              "tokens": scored * block, "loss": metrics["val/loss"], "perplexity": metrics["val/ppl"],
              "bpc": metrics["val/bpc"], "bpb": metrics["val/bpb"]}
    scope = ("every window" if limit == 1.0 else
             f"the {scored:,} windows the run's validation scored (trainer.limit_val_batches={limit}; "
             "whole_split=true scores all)")
    print(f"{'checkpoint':<12}{loaded.path} (step {loaded.step})\n{'data':<12}{name}: {scope}")
    print(f"{'tokens':<12}{result['tokens']:,}\n{'loss':<12}{result['loss']:.4f} nats/token")
    print(f"{'perplexity':<12}{result['perplexity']:.3f}\n{'bpc':<12}{result['bpc']:.4f} bits/char")
    print(f"{'bpb':<12}{result['bpb']:.4f} bits/byte of UTF-8 text (tokenizer-independent)")
    stem = Path(name).stem.replace(" ", "-") if cfg.data.path else ("val-all" if limit == 1.0 else "val")
    out = RunDir.evaluation(loaded.path, stem)
    out.write_text(json.dumps(result, indent=2))
    print(f"{'written':<12}{out}")
    return result


def val_batches(length: int, limit) -> int:
    """How many of a loader's `length` batches a validation with trainer.limit_val_batches=`limit` scores: a count
    (an int), or a fraction of them (a float; 1.0 all), as Lightning reads the setting."""
    if isinstance(limit, bool) or not isinstance(limit, (int, float)):
        raise GptlabError(f"trainer.limit_val_batches={limit} is neither a count nor a fraction")
    if isinstance(limit, float) and limit > 1 and limit.is_integer():  # 20.0: a count
        limit = int(limit)
    count = min(length, limit) if isinstance(limit, int) else int(length * limit)
    if count == 0 and length:
        raise GptlabError(f"the run's validation scored no batch (trainer.limit_val_batches={limit} of {length}): "
                          "whole_split=true scores every window")
    return count


@dataclass
class Scoring:
    """How eval runs the model: on `device`, in `precision` (Lightning's names: 32-true, bf16-mixed, 16-mixed,
    bf16-true, 16-true, 64-true), which it does as Lightning's precision plugins do: mixed under torch.autocast,
    true with the weights (and the tensors made in the forward pass) in that dtype."""

    device: torch.device
    precision: str

    AUTOCAST: ClassVar[dict[str, torch.dtype]] = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
    WEIGHTS: ClassVar[dict[str, torch.dtype]] = {"bf16-true": torch.bfloat16, "16-true": torch.float16,
                                                 "64-true": torch.float64}

    @property
    def weights(self) -> torch.dtype:
        return self.WEIGHTS.get(self.precision, torch.float32)

    @property
    def sums(self) -> torch.dtype:
        """The dtype of the metrics' sums: bf16-true and 16-true convert them with the module (`module.to(dtype)`),
        64-true does not (`module.double()`, which torchmetrics leaves alone)."""
        return self.weights if self.weights in (torch.bfloat16, torch.float16) else torch.float32

    @contextlib.contextmanager
    def forward(self):
        dtype = self.AUTOCAST.get(self.precision)
        if dtype is not None:
            with torch.autocast(self.device.type, dtype=dtype, cache_enabled=False):
                yield
            return
        default = torch.get_default_dtype()
        torch.set_default_dtype(self.weights)
        try:
            yield
        finally:
            torch.set_default_dtype(default)


def validator(device: torch.device, precision) -> Scoring:
    """Scoring on one device in the run's precision where it is fast here: `auto` is decided for this device, bf16
    where bf16 is slow here (a CPU without bf16 units) is fp32, and so is fp16 off CUDA; a line on stderr says so."""
    precision = "32-true" if str(precision) == "32" else str(precision)
    if precision == "auto":
        precision = auto_precision(device)[0]
    elif precision.startswith("bf16") and not has_fast_bf16(device):
        print(f"[the run trained in {precision}; bf16 is slow on this {device.type}: scoring in 32-true]",
              file=sys.stderr)
        precision = "32-true"
    elif precision.startswith("16-") and device.type != "cuda":
        print(f"[the run trained in {precision}; fp16 is for CUDA GPUs: scoring in 32-true on this {device.type}]",
              file=sys.stderr)
        precision = "32-true"
    elif precision not in ("32-true", *Scoring.AUTOCAST, *Scoring.WEIGHTS):
        print(f"[the run trained in {precision}: scoring in 32-true]", file=sys.stderr)
        precision = "32-true"
    return Scoring(device, precision)


def score(model: GPT, tokenizer: Tokenizer, batches: Iterable, count: Optional[int], scoring: Scoring,
          tokens_per_char: float) -> dict[str, float]:
    """The first `count` batches (None: all) through the model as the run's validation step puts them, the figures
    as it logs them: val/loss, val/ppl, val/bpc and, where the tokens stand for text, val/bpb."""
    model.to(scoring.device, scoring.weights).eval()
    table = byte_table(tokenizer, scoring.device)
    totals = ValTotals(scoring.device, scoring.sums)
    with torch.inference_mode(), tqdm(total=count, desc="scoring", unit="batch", disable=None, leave=False) as bar:
        for x, y in itertools.islice(batches, count):
            x, y = x.to(scoring.device), y.to(scoring.device)
            with scoring.forward():  # the whole step, as Lightning runs validation_step
                logits, loss = model(x, y)
                totals.update(batch_figures(logits, y, loss, table))
            bar.update()
    return totals.figures(tokens_per_char)


def run_chat(cfg: EvalConfig, loaded: checkpoint.Loaded, device, trained: TrainerConfig) -> dict:
    """Conversations: the loss on the answer tokens (as the run's validation computes it) and the exact-match
    accuracy of greedy answers, every assistant turn answered from the conversation before it."""
    from gptlab.data import chat
    from gptlab.model.chat import greedy_answers
    from gptlab.tokenizers.chat import has_template

    tok, model = loaded.tokenizer, loaded.model
    if not has_template(tok):
        raise GptlabError(f"{loaded.path} was not fine-tuned on conversations (its tokenizer has no chat markers): "
                          "train it with data=chat first, or evaluate it on text without data=chat")
    if cfg.data.path:
        convs, name = chat.read_conversations(cfg.data.path), str(cfg.data.path)
    else:
        run_data = loaded.config.get("data") or {}
        _, convs, _ = chat.split(run_data["path"], run_data.get("val_fraction", DataConfig.val_fraction))
        name = "val split"
    block = model.config.block_size
    rows = chat.encode(tok, convs, block + 1, overflow="truncate")
    loader = chat.loader(rows, cfg.data.batch_size or 64)
    metrics = score(model, tok, loader, len(loader), validator(device, trained.precision),
                    chat.tokens_per_char(rows, tok))

    asked = chat.questions(tok, convs, block)
    questions, gold, owner = [q.prompt for q in asked], [q.reference for q in asked], [q.conversation for q in asked]
    model.to(device)
    with tqdm(total=len(questions), desc="answers", unit="answer", disable=None, leave=False) as bar:
        answers = greedy_answers(model, tok, questions, [q.budget for q in asked],
                                 batch_size=cfg.data.batch_size or 64, on_done=bar.update)
    right = [a == g for a, g in zip(answers, gold)]
    all_right = {n: True for n in owner}
    for n, ok in zip(owner, right):
        all_right[n] &= ok
    result = {"checkpoint": str(loaded.path), "step": loaded.step, "data": name, "conversations": len(convs),
              "answers": len(right), "exact_match": sum(right) / max(1, len(right)),
              "conversations_exact": sum(all_right.values()) / max(1, len(all_right)),
              "loss": metrics["val/loss"], "perplexity": metrics["val/ppl"], "bpb": metrics.get("val/bpb"),
              "answer_tokens": rows.targets}
    tasks = sorted({convs[n].task for n in owner if convs[n].task})
    if tasks:
        result["exact_match_by_task"] = {t: sum(ok for n, ok in zip(owner, right) if convs[n].task == t) /
                                         sum(convs[n].task == t for n in owner) for t in tasks}
    print(f"{'checkpoint':<14}{loaded.path} (step {loaded.step})\n{'data':<14}{name}: {len(convs):,} conversations, "
          f"{len(right):,} answers")
    print(f"{'exact match':<14}{result['exact_match']:.1%} of answers ({sum(right):,} of {len(right):,}, greedy), "
          f"{result['conversations_exact']:.1%} of conversations")
    print(f"{'loss':<14}{result['loss']:.4f} nats per answer token ({rows.targets:,} tokens; prompts not scored)")
    for t, acc in result.get("exact_match_by_task", {}).items():
        print(f"  {t:<16}{acc:6.1%}")
    wrong = [(q, g, a) for q, g, a, ok in zip(questions, gold, answers, right) if not ok][:3]
    for q, g, a in wrong:
        print(f"  wrong: {tok.decode(q[-40:])!r} -> {a!r} (expected {g!r})")
    stem = Path(name).stem.replace(" ", "-")
    out = RunDir.evaluation(loaded.path, stem)
    out.write_text(json.dumps(result, indent=2))
    print(f"{'written':<14}{out}")
    return result


def run_harness(cfg: EvalConfig) -> dict:
    """tasks=...: the LM Evaluation Harness scores the model (gptlab/harness.py) on its tasks; its table is printed
    and its results written beside the checkpoint."""
    try:
        import lm_eval
        from lm_eval.utils import handle_non_serializable, make_table

        from gptlab.harness import GptlabLM, offline_error, task_manager
    except ImportError as e:
        raise GptlabError(f'tasks= needs the LM Evaluation Harness ({e.name} is not installed): '
                          'pip install -e ".[eval]"') from None
    names = [t.strip() for t in cfg.tasks.split(",") if t.strip()]  # type: ignore[union-attr]
    manager = task_manager(names, cfg.include_path)
    lm = GptlabLM(cfg.ckpt_path, device=cfg.device, batch_size=cfg.batch_size)
    chat = lm.is_chat if cfg.apply_chat_template is None else cfg.apply_chat_template
    print(f"[{lm.source}: {', '.join(names)} by the LM Evaluation Harness {lm_eval.__version__}"
          f"{', chat template applied' if chat else ''}]", file=sys.stderr)
    try:
        results = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=cfg.num_fewshot, limit=cfg.limit,
                                          task_manager=manager, apply_chat_template=chat, log_samples=False,
                                          batch_size=cfg.batch_size, device=str(lm.device))
    except Exception as e:  # the data of a hub task: offline, the harness fails inside `datasets`
        error = offline_error(e, manager, names)
        if error is None:
            raise
        raise error from None
    print(make_table(results))
    stem = "harness-" + "-".join(n.replace("/", "_") for n in names)
    out = RunDir.evaluation(Path(lm.source), stem)
    kept = {k: results[k] for k in ("results", "versions", "n-shot", "higher_is_better", "n-samples", "config")
            if k in results}
    out.write_text(json.dumps(kept, indent=2, default=handle_non_serializable))
    print(f"written  {out}")
    return kept


def own_split(loaded: checkpoint.Loaded, cfg: EvalConfig) -> tuple[TokenFiles, DataConfig]:
    """The run's own token files, found through the same token cache (its tokenizer settings give the same key), and
    its data settings (with eval's data.batch_size as the validation batch size, if given)."""
    run_cfg = loaded.config
    if "data" not in run_cfg:
        raise GptlabError(f"{cfg.ckpt_path} has no validation split of its own: give data.path=TEXT_FILE")
    spec = DataConfig(**{k: v for k, v in run_cfg["data"].items() if k in DataConfig.__dataclass_fields__})
    if cfg.data.batch_size:
        spec = dataclasses.replace(spec, val_batch_size=cfg.data.batch_size)
    if run_cfg.get("init_from"):  # the data was encoded with the source's tokenizer, which the checkpoint holds
        settings: object = loaded.tokenizer
    else:  # the tokenizer was trained on the data: its settings, as the run passed them, give the same cache key
        settings = dataclasses.asdict(tokenizer_spec(run_cfg["tokenizer"]))
    files = open_tokens(spec, settings, loaded.model.config.block_size,  # type: ignore[arg-type]
                        cfg.paths.cache_dir, cfg.paths.data_dir)
    if files.tokenizer.to_dict() != loaded.tokenizer.to_dict():
        raise GptlabError("the data now gives a different tokenizer than the checkpoint's: has the text changed?")
    return files, spec


main = cli.entry(run, "eval", ("ckpt_path", "data.path", "paths.data_dir", "paths.cache_dir", "tasks", "include_path"),
                 EvalConfig, "Loss, perplexity and bits per character and per byte of a trained model; or tasks of the "
                 "LM Evaluation Harness.",
                 "ckpt_path=RUN_DIR [data.path=TEXT_FILE | tasks=hellaswag,arc_easy [include_path=DIR]] "
                 "[key=value ...]")

if __name__ == "__main__":
    main()
