"""gptlab as a model of EleutherAI's LM Evaluation Harness (`pip install -e ".[eval]"`).

    gptlab eval ckpt_path=RUN_DIR tasks=hellaswag,arc_easy            # gptlab's own command (gptlab/eval.py)
    lm_eval.simple_evaluate(model=GptlabLM("RUN_DIR"), tasks=[...])    # the harness's Python API
    python -m gptlab.harness --model gptlab --model_args pretrained=RUN_DIR --tasks ...   # the harness's CLI

The harness hands a model three kinds of request; each is answered here as its own `hf` model answers it, so the
scores equal those of the folder `gptlab export` writes (tests/test_harness.py checks that):
- loglikelihood(context, continuation): the log-probability of the continuation's tokens and whether greedy
  decoding would have produced them. The harness splits the text into tokens (TemplateLM); requests are scored
  longest first, one forward pass per batch, the head only at the positions that predict a continuation; a
  context longer than the model's window loses its oldest tokens.
- loglikelihood_rolling(text): the whole text's log-probability in windows of block_size, each token predicted
  once with as much context as the window holds (the harness's own windowing), for perplexity tasks.
- generate_until(context, {until, max_gen_toks, ...}): the decoding engine (model/engine.py), batch_size requests
  at a time, each ending at its first stop sequence (found as its text grows) or the end-of-text token.
A chat model's prompts can go through its chat template (`apply_chat_template`).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm.auto import tqdm

from gptlab import checkpoint
from gptlab.devices import inference_dtype, pick_device
from gptlab.errors import GptlabError
from gptlab.model import GPT, Engine, Request
from gptlab.model.engine import inference
from gptlab.tokenizers import Tokenizer
from gptlab.tokenizers.chat import END, has_template, render


@register_model("gptlab")
class GptlabLM(TemplateLM):
    """A gptlab checkpoint, run dir or GPT-2 source (`gpt2`, a Hugging Face folder) as a harness model."""

    def __init__(self, pretrained: Optional[str] = None, device: str = "auto", batch_size: Union[int, str] = 16,
                 dtype: Optional[str] = None, max_gen_toks: int = 256, model: Optional[GPT] = None,
                 tokenizer: Optional[Tokenizer] = None, max_batch_size: Optional[int] = None) -> None:
        """pretrained: what `checkpoint.load` takes; or model and tokenizer as they are (a run in training).
        max_batch_size: what the harness passes every model (its batch_size=auto's ceiling); auto here is 16."""
        super().__init__()
        if model is None or tokenizer is None:
            if pretrained is None:
                raise ValueError("GptlabLM needs pretrained= (a checkpoint, a run dir, gpt2) or model= and tokenizer=")
            self._device = pick_device(device)
            loaded = checkpoint.load(pretrained, device=self._device, dtype=inference_dtype(dtype, self._device))
            model, tokenizer, pretrained = loaded.model, loaded.tokenizer, str(loaded.path)
        self._device = model.transformer.wte.weight.device
        self.model, self.tok, self.source = model, tokenizer, str(pretrained or "the model in training")
        self.batch_size = 16 if str(batch_size).startswith("auto") else int(batch_size)  # "auto": a fixed 16
        self.max_length = self.model.config.block_size
        self.max_gen_toks = int(max_gen_toks)
        specials = sorted(self.tok.special_tokens, key=len, reverse=True)
        # special tokens are recognised wherever they are written, as Hugging Face tokenizers do
        self._specials = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        self.is_chat = has_template(self.tok)  # a chat model: prompts can go through its template
        self._special_ids = set(self.tok.special_tokens.values())

    # -- tokens ---------------------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        """Where generation stops: a chat model's end of turn, else the end-of-text token (or none, -1)."""
        if self.is_chat:
            return self.tok.special_tokens[END]
        return -1 if self.tok.eot_id is None else self.tok.eot_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context (and a rolling window's first token) is conditioned on: the end-of-text token;
        a char model without one starts as after a line break (or on id 0)."""
        if self.tok.eot_id is not None:
            return self.tok.eot_id
        stoi = getattr(self.tok, "stoi", {})
        return stoi.get("\n", 0)

    @property
    def tokenizer_name(self) -> str:
        return f"gptlab-{self.tok.kind}-{self.tok.vocab_size}"

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> list[int]:
        if self._specials is None:
            return self.tok.encode(string)
        ids: list[int] = []
        for piece in self._specials.split(string):
            if piece in self.tok.special_tokens:
                ids.append(self.tok.special_tokens[piece])
            elif piece:
                ids += self.tok.encode(piece)
        return ids

    def tok_decode(self, ids: list[int]) -> str:
        """Text of ids, special tokens left out (as the harness's hf model decodes)."""
        return self.tok.decode([i for i in ids if i not in self._special_ids])

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation as gptlab's template renders it (`render`), as text: the harness hands prompts over as
        text, so a message that spells out a marker reads as that marker here, as with Hugging Face tokenizers."""
        ids, _ = render(self.tok, chat_history, reply=add_generation_prompt)  # type: ignore[arg-type]
        return self.tok.decode(ids)

    # -- scores ---------------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """(key, context ids, continuation ids) -> (log-probability of the continuation, greedy or not)."""
        with inference(self.model):
            return self._score(requests, disable_tqdm)

    @torch.no_grad()
    def _score(self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool) -> list[tuple[float, bool]]:
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        with tqdm(total=len(requests), desc="loglikelihood", disable=disable_tqdm or None, leave=False) as bar:
            for start in range(0, len(order), self.batch_size):
                which = order[start:start + self.batch_size]
                # the last max_length tokens before each one scored: a long context loses its oldest tokens
                rows = [(requests[i][1] + requests[i][2])[-(self.max_length + 1):][:-1] for i in which]
                width = max(map(len, rows))
                x = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=self._device)  # right-padded
                spans = []  # (row, first, end): the positions that predict the continuation
                for b, (i, n) in enumerate(zip(which, map(len, rows))):
                    if len(requests[i][2]) > n:
                        raise ValueError(f"a continuation of {len(requests[i][2])} tokens is longer than the model's "
                                         f"context of {self.max_length}: it cannot be scored (the harness's hf model "
                                         "refuses it too)")
                    spans.append((b, n - len(requests[i][2]), n))
                features = self.model.features(x)  # (B, T, C): the head and its softmax only where scored
                logp = F.log_softmax(self.model.head(torch.cat([features[b, s:e] for b, s, e in spans])).float(), -1)
                for i, scored in zip(which, logp.split([e - s for _, s, e in spans])):
                    target = torch.tensor(requests[i][2], device=self._device)
                    greedy = bool((scored.argmax(dim=-1) == target).all())
                    out[i] = (float(scored.gather(1, target[:, None]).sum()), greedy)
                bar.update(len(which))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for n, (text,) in enumerate(req.args for req in requests):
            for context, continuation in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logp, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[n] += logp
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Continuations, up to batch_size decoded at once, each request taking a row as one frees."""
        eos = None if self.eot_token_id < 0 else self.tok.decode([self.eot_token_id])
        stop = None if self.eot_token_id < 0 else self.eot_token_id
        jobs = []
        for i, (context, gen_kwargs) in enumerate(req.args for req in requests):
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            budget = min(kwargs.pop("max_gen_toks"), self.max_length - 1)
            prompt = self.tok_encode(context)[-(self.max_length - budget):] or [self.prefix_token_id]  # as hf does
            jobs.append(Request(prompt, budget, float(kwargs.get("temperature") or 0.0), stop_token=stop,
                                stop=[u for u in until if u], seed=1234 + i))  # repeats sample anew
        engine = Engine(self.model, min(self.batch_size, max(1, len(jobs))), self.tok)
        with tqdm(total=len(jobs), desc="generate_until", disable=disable_tqdm or None, leave=False) as bar:
            engine.run(jobs, on_step=lambda advanced: bar.update(sum(r.finished for r in advanced)))
        # the text as hf's model writes it: special tokens left out, cut at the first stop sequence
        return [postprocess_generated_text(self.tok_decode(r.tokens[:-1] if r.tokens[-1] == stop else r.tokens),
                                           list(r.stop), None) for r in jobs]

    def get_model_info(self) -> dict:
        return {"model_source": self.source, "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(next(self.model.parameters()).dtype)}


@functools.lru_cache(maxsize=4)
def _indexed(include_path: Optional[str]) -> Any:
    """The harness's index of its thousands of task YAMLs (and include_path's): ~10 s to build, so built once a
    process for each folder (a run scoring a task at every validation, the tests)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def task_manager(names: list[str], include_path: Optional[str] = None) -> Any:
    """The harness's TaskManager for these task names (local ones from include_path's YAMLs), each checked to
    exist: a user's mistake is one line."""
    if include_path and not Path(include_path).expanduser().is_dir():
        raise GptlabError(f"include_path={include_path} is not a folder: give the folder of your task YAMLs")
    manager = _indexed(str(Path(include_path).expanduser().resolve()) if include_path else None)
    unknown = [t for t in names if t not in manager.all_tasks]
    if unknown:
        raise GptlabError(f"no task named {', '.join(unknown)} in the harness"
                          f"{' or in ' + include_path if include_path else ''}: `lm_eval ls tasks` lists them; "
                          "a task of your own: include_path=FOLDER of task YAMLs")
    return manager


def offline_error(e: BaseException, manager: Any, names: list[str]) -> Optional[GptlabError]:
    """The one line for an exception that comes from task data that could not be downloaded (no network, the Hub
    unreachable), naming each task's data set; None for any other exception."""
    kinds = {"ConnectionError", "ConnectTimeout", "OfflineModeIsEnabled", "LocalEntryNotFoundError",
             "DatasetNotFoundError", "HfHubHTTPError", "MaxRetryError", "NameResolutionError"}
    cause: Optional[BaseException] = e
    while cause is not None and not (type(cause).__name__ in kinds or isinstance(cause, ConnectionError)):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    sources = []
    for n in names:  # the data set a task reads: its YAML's dataset_path, where it names one
        entry = manager.task_index.get(n)
        path = (getattr(entry, "cfg", None) or {}).get("dataset_path") if entry is not None else None
        sources.append(f"{n} ({path} on the Hugging Face Hub)" if path else n)
    return GptlabError(f"the data of {', '.join(sources)} could not be downloaded ({type(e).__name__}): "
                       "without network, write a task over local files (a YAML with dataset_path: json and "
                       "dataset_kwargs.data_files, see docs/evaluation.md) and give include_path=ITS_FOLDER")


class TaskScorer:
    """One task of the harness, loaded once, scored again on a model as it trains (the HarnessTask callback)."""

    def __init__(self, task: str, include_path: Optional[str] = None, limit: Optional[float] = None,
                 batch_size: int = 16) -> None:
        from lm_eval.tasks import get_task_dict

        manager = task_manager([task], include_path)
        self.task, self.limit, self.batch_size = task, limit, batch_size
        self.tasks = get_task_dict([task], manager)  # its data loaded here, once

    def __call__(self, model: GPT, tokenizer: Tokenizer) -> dict[str, float]:
        """The task's metrics for this model ("acc", "acc_norm", ...), standard errors left out."""
        from lm_eval.evaluator import evaluate

        lm = GptlabLM(model=model, tokenizer=tokenizer, batch_size=self.batch_size)
        results = evaluate(lm, self.tasks, limit=self.limit, verbosity="ERROR")["results"][self.task]
        return {k.split(",")[0]: float(v) for k, v in results.items()
                if isinstance(v, (int, float)) and "stderr" not in k and k != "alias"}


def main() -> None:
    """The harness's own command line, with gptlab's model registered: `--model gptlab --model_args
    pretrained=RUN_DIR[,batch_size=16,device=cpu,dtype=float32]`, everything else as `lm_eval` takes it."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
