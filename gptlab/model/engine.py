"""The one room where a prompt becomes tokens and text: requests in, tokens out, through one decode loop.

Every client decodes here: `generate` (nanoGPT's: a batch of prompts as a tensor), `complete` (a prompt -> text,
streamed), the chat and eval's exact match (model/chat.py), the training samples, `gptlab serve` (requests that
come and go, serving/worker.py) and the LM Evaluation Harness's generate_until (harness.py).

An Engine decodes through the `rows` rows of one KV cache. A request waits for a free row; its prompt is read
into the row (the prompts admitted together in one pass, left-padded to one length), and from then on each
`step()` gives every running request one token, each row at its own position, until its stop token, a stop
string, its max_new_tokens or a cancel frees the row for the next request. Each request samples with its own
settings and generator, so its tokens are the ones it gets alone (tests/test_engine.py).

A text longer than the context slides: once a row's window would pass block_size tokens, its last 3/4 block is
read again from the row's first slot (positions are absolute, so cached keys cannot be shifted). Without the
cache (use_cache=False) each step reads the whole window, sliding alike, so the two agree token for token.
"""

from __future__ import annotations

import functools
import weakref
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence, Union

import torch

from gptlab.model.cache import KVCache
from gptlab.model.gpt import GPT
from gptlab.model.sampling import SEED, SamplingConfig, check_sampling, sample_next
from gptlab.model.text import TextStream
from gptlab.tokenizers import Tokenizer


@dataclass(eq=False)
class Request:
    """One prompt's generation: its settings, then what it has produced so far."""

    prompt: list[int]
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    stop_token: Optional[int] = None  # the answer ends once it is written (kept in `tokens`, not in the text)
    stop: Sequence[str] = ()  # stop strings: the text ends before the first one written (needs a tokenizer)
    seed: int = SEED
    generator: Optional[torch.Generator] = None  # None: its own, from seed; requests that share one sample together
    tokens: list[int] = field(default_factory=list)  # the new tokens, in order
    text: Optional[TextStream] = None  # their text, when the engine has a tokenizer
    finish: Optional[str] = None  # "stop" (the stop token or a stop string), "length" or "cancelled"
    window: int = field(default=-1, repr=False)  # where the row's window begins in prompt + tokens; -1: unread

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("a request needs at least one prompt token")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        check_sampling(self.temperature, self.top_k, self.top_p)

    @property
    def finished(self) -> bool:
        return self.finish is not None


def decode_one(model: GPT, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One step: each row's newest token (B, 1) -> its next-token logits (B, vocab). Its shapes never change, so
    torch.compile can capture it whole (as a CUDA graph on a GPU)."""
    return model(tokens, cache=cache)[0][:, -1]


@functools.cache
def compiled_decode_one(mode: str) -> Callable[..., torch.Tensor]:
    # shapes that change from call to call (rows, cache lengths) become dynamic after one recompile
    return torch.compile(decode_one, mode=mode, fullgraph=True)


def new_cache(model: GPT, rows: int, max_len: int) -> KVCache:
    c, w = model.config, model.transformer.wte.weight
    # under autocast (bf16-mixed training's samples and rollouts) keys and values come in autocast's dtype
    dtype = torch.get_autocast_dtype(w.device.type) if torch.is_autocast_enabled(w.device.type) else w.dtype
    return KVCache(c.n_layer, rows, c.kv_heads, max_len, c.head_size, w.device, dtype)


# a compiled engine's cache, kept for the next compiled engine of its model and shape once the last one is gone, so
# its CUDA graphs find the same tensors at the same addresses
_caches: "weakref.WeakKeyDictionary[GPT, tuple[KVCache, weakref.ref]]" = weakref.WeakKeyDictionary()


def kept_cache(model: GPT, engine: "Engine", rows: int, max_len: int) -> KVCache:
    w = model.transformer.wte.weight
    cache, owner = _caches.get(model, (None, None))
    free = owner is None or owner() is None
    # an inference-mode tensor cannot be updated outside inference mode: made in one, it serves only there
    same = cache is not None and (cache.batch, cache.max_len, cache.k.device, cache.k.dtype, cache.k.is_inference()) \
        == (rows, max_len, w.device, w.dtype, torch.is_inference_mode_enabled())
    if free and same:
        cache.reset()  # type: ignore[union-attr]
    else:
        if free:  # the old one freed before the new one is made
            _caches.pop(model, None)
            cache = None
        cache = new_cache(model, rows, max_len)
    _caches[model] = (cache, weakref.ref(engine))
    return cache  # type: ignore[return-value]


@contextmanager
def inference(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd; a model in training (the run's samples) goes back to it after."""
    training = model.training
    if training:
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if training:
            model.train()


class Engine:
    """Decodes requests through `rows` rows of a KV cache of max_len slots (None: the model's context)."""

    def __init__(self, model: GPT, rows: int = 1, tokenizer: Optional[Tokenizer] = None,
                 vocab_size: Optional[int] = None, max_len: Optional[int] = None, use_cache: bool = True,
                 compile: Optional[bool] = None) -> None:
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.model, self.tokenizer, self.block = model, tokenizer, model.config.block_size
        # sample only ids the tokenizer has: a vocabulary padded past it is never trained towards
        self.vocab_size = vocab_size or (tokenizer.vocab_size if tokenizer is not None else None)
        self.device = model.transformer.wte.weight.device
        self.slots: list[Optional[Request]] = [None] * rows
        self.waiting: deque[Request] = deque()
        self.compiled = (self.device.type == "cuda" if compile is None else compile) and use_cache
        # compiled: every cache of the context's length, so one shape serves every call
        self.max_len = self.block if self.compiled else min(max_len or self.block, self.block)
        self.cache: Optional[KVCache] = None
        if use_cache:
            self.cache = kept_cache(model, self, rows, self.max_len) if self.compiled else \
                new_cache(model, rows, self.max_len)
        self._step = compiled_decode_one("reduce-overhead" if self.device.type == "cuda" else "default") \
            if self.compiled else decode_one
        self._next = torch.zeros(rows, 1, dtype=torch.long, device=self.device)  # each row's newest token
        self._used = [0] * rows  # cache slots each row holds (padding included)
        self._generators: dict[Request, torch.Generator] = {}  # the generator each request samples with

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or any(r is not None for r in self.slots)

    def add(self, request: Request) -> Request:
        """Queue a request; it starts at the next step a row is free."""
        if min(self.block, len(request.prompt) + request.max_new_tokens) > self.max_len:
            raise ValueError(f"a prompt of {len(request.prompt)} tokens and {request.max_new_tokens} new ones need "
                             f"more than this engine's {self.max_len} cache slots")
        if request.stop and self.tokenizer is None:
            raise ValueError("stop strings need an engine with a tokenizer")
        if self.tokenizer is not None:
            request.text = TextStream(self.tokenizer, request.stop)
        self._generators[request] = request.generator or \
            torch.Generator(device=self.device).manual_seed(request.seed)
        self.waiting.append(request)
        return request

    def cancel(self, request: Request) -> None:
        """Stop a request now (its client went away): its row is free for the next one at the next step."""
        if request.finish is None:
            request.finish = "cancelled"
        if request in self.waiting:
            self.waiting.remove(request)
            self._generators.pop(request, None)
        self._retire()

    def run(self, requests: Sequence[Request], on_step: Optional[Callable[[list[Request]], None]] = None
            ) -> Sequence[Request]:
        """Decode requests to their ends; on_step(the requests that got a token) after each step."""
        for r in requests:
            self.add(r)
        with inference(self.model):
            while self.busy:
                advanced = self.step()
                if on_step is not None:
                    on_step(advanced)
        return requests

    def step(self) -> list[Request]:
        """Admit waiting requests into free rows, then one token for every running request. Returns the requests
        that got one."""
        with inference(self.model):
            for r, req in enumerate(self.slots):
                if req is None and self.waiting:
                    self.slots[r] = self.waiting.popleft()
            running = [r for r, req in enumerate(self.slots) if req is not None]
            windows = {r: self._window(self.slots[r]) for r in running if self._must_read(self.slots[r])}
            order, logits = [], []
            for group in self._groups(windows):
                order += group
                logits.append(self._read(group, [windows[r] for r in group]))
            decode = [r for r in running if r not in windows]
            if decode:
                order += decode
                logits.append(self._decode(decode))
            if not order:
                return []
            tokens = self._sample(order, logits[0] if len(logits) == 1 else torch.cat(logits))  # (A, 1)
            rows = self._rows(order)
            if rows is None:
                self._next.copy_(tokens)
            else:
                self._next.index_copy_(0, rows, tokens)
            advanced = [self.slots[r] for r in order]
            for req, token in zip(advanced, tokens.view(-1).tolist()):  # one read from the device a step
                self._record(req, token)  # type: ignore[arg-type]
            self._retire()
            return advanced  # type: ignore[return-value]

    # -- reading windows (prefill) and decoding -----------------------------------------------------------------
    def _must_read(self, req: Request) -> bool:
        """A new request, a window that would pass the context, or no cache at all: the window is read whole."""
        return req.window < 0 or self.cache is None or len(req.prompt) + len(req.tokens) - req.window > self.block

    def _window(self, req: Request) -> list[int]:
        seq = req.prompt + req.tokens
        if req.window < 0:  # a prompt longer than the context keeps its last block_size tokens
            req.window = max(0, len(seq) - self.block)
        elif len(seq) - req.window > self.block:  # full: slide, keeping the last 3/4 of a block
            req.window = len(seq) - max(1, 3 * self.block // 4)
        return seq[req.window:]

    def _groups(self, windows: dict[int, list[int]]) -> list[list[int]]:
        """Rows whose windows are read in one pass: windows of one length; or of different lengths, left-padded to
        the longest, when padding and answer fit every row's slots (a padded row must never slide early, so each
        row's tokens stay those it gets alone). Without the cache, one length only (nothing masks padding)."""
        groups: list[list[int]] = []
        for r in sorted(windows, key=lambda r: -len(windows[r])):
            if groups:
                g = groups[-1]
                width = len(windows[g[0]])  # the longest of the group
                same = all(len(windows[q]) == len(windows[r]) for q in g)
                fits = self.cache is not None and all(
                    width + self.slots[q].max_new_tokens - len(self.slots[q].tokens) <= self.max_len  # type: ignore
                    for q in (*g, r))
                if same or fits:
                    g.append(r)
                    continue
            groups.append([r])
        return groups

    def _rows(self, rows: list[int]) -> Optional[torch.Tensor]:
        return None if rows == list(range(len(self.slots))) else torch.tensor(rows, device=self.device)

    def _read(self, rows: list[int], windows: list[list[int]]) -> torch.Tensor:
        """The windows' next-token logits (len(rows), vocab), read into the rows' emptied cache rows."""
        width = max(map(len, windows))
        idx = torch.tensor([[0] * (width - len(w)) + w for w in windows], device=self.device)
        if self.cache is None:
            return self.model(idx)[0][:, -1]
        which = self._rows(rows)
        self.cache.reset(which, torch.tensor([width - len(w) for w in windows], device=self.device))
        self.cache.rows, self.cache.seen = which, width
        for r in rows:
            self._used[r] = width
        return self.model(idx, cache=self.cache)[0][:, -1]

    def _decode(self, rows: list[int]) -> torch.Tensor:
        """The next-token logits of rows whose newest token is not in the cache yet: one token each."""
        assert self.cache is not None
        padded = rows
        if self.compiled and len(rows) < len(self.slots):  # a compiled step per power of two, not per count:
            size = min(len(self.slots), 1 << (len(rows) - 1).bit_length())  # free rows fill the rest, emptied
            padded = rows + [r for r, q in enumerate(self.slots) if q is None][: size - len(rows)]
            if len(padded) > len(rows):  # first, so they never run out of slots (what they write nobody reads)
                self.cache.reset(torch.tensor(padded[len(rows):], device=self.device))
        which = self._rows(padded)
        for r in rows:
            self._used[r] += 1
        # eager: attention reads the slots written so far; compiled: every slot, one shape for every step
        self.cache.rows, self.cache.seen = which, None if self.compiled else max(self._used[r] for r in rows)
        logits = self._step(self.model, self._next if which is None else self._next[which], self.cache)
        return logits[: len(rows)]

    # -- tokens ---------------------------------------------------------------------------------------------------
    def _sample(self, order: list[int], logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token (A, 1), with its request's settings and generator: rows that share both (all the
        greedy ones, a batch's samples) in one call."""
        if self.vocab_size:
            logits = logits[:, :self.vocab_size]
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(order):
            q = self.slots[r]
            key = (0.0,) if q.temperature == 0 else \
                (q.temperature, q.top_k, q.top_p, id(self._generators[q]))  # type: ignore[union-attr]
            groups.setdefault(key, []).append(i)
        def pick(members: list[int], rows: torch.Tensor) -> torch.Tensor:
            q = self.slots[order[members[0]]]
            assert q is not None
            return sample_next(rows, q.temperature, q.top_k, q.top_p, self._generators[q])

        if len(groups) == 1:
            return pick(next(iter(groups.values())), logits)
        out = torch.empty(len(order), 1, dtype=torch.long, device=logits.device)
        for members in groups.values():
            at = torch.tensor(members, device=logits.device)
            out[at] = pick(members, logits[at])
        return out

    @staticmethod
    def _record(req: Request, token: int) -> None:
        req.tokens.append(token)
        if token == req.stop_token or (req.text is not None and req.text.push(token)):
            req.finish = "stop"
        elif len(req.tokens) >= req.max_new_tokens:
            req.finish = "length"
        if req.finish is not None and req.text is not None:
            req.text.close()

    def _retire(self) -> None:
        """Free the rows of finished requests."""
        for r, req in enumerate(self.slots):
            if req is not None and req.finish is not None:
                self.slots[r] = None
                self._generators.pop(req, None)


# -- the front doors ----------------------------------------------------------------------------------------------
def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids; an empty prompt starts from the end-of-text token, where there is one."""
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:
        if tokenizer.eot_id is None:
            raise ValueError("the prompt is empty and this tokenizer has no start token")
        ids = [tokenizer.eot_id]
    return ids


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
             top_p: Optional[float] = None, generator: Optional[torch.Generator] = None, use_cache: bool = True,
             stop_token: Optional[int] = None, vocab_size: Optional[int] = None, compile: Optional[bool] = None,
             row_start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """nanoGPT's generate: continue each row of idx (B, T) by up to max_new_tokens tokens -> (B, T + n), on the
    model's device. Rows sample as one batch from `generator` (None: one seeded from torch's global generator).
    A row that wrote stop_token is padded with it; the output ends where the last row stopped. row_start (B,):
    prompts of different lengths, left-padded to T, row b's beginning at idx[b, row_start[b]]. vocab_size: sample
    only ids below it (a vocabulary padded past its tokenizer's). compile: torch.compile the one-token step."""
    device = model.transformer.wte.weight.device
    idx = idx.to(device)
    if max_new_tokens == 0:
        return idx
    B, T = idx.shape
    if generator is None and temperature > 0:
        generator = torch.Generator(device=device).manual_seed(int(torch.randint(2**62, ())))
    starts = [0] * B if row_start is None else row_start.tolist()
    requests = [Request(row[s:], max_new_tokens, temperature, top_k, top_p, stop_token, generator=generator)
                for row, s in zip(idx.tolist(), starts)]
    engine = Engine(model, B, vocab_size=vocab_size, max_len=T + max_new_tokens, use_cache=use_cache, compile=compile)
    engine.run(requests)
    n = max(len(r.tokens) for r in requests)
    out = torch.full((B, T + n), 0 if stop_token is None else stop_token, dtype=torch.long)
    for b, r in enumerate(requests):
        out[b, T:T + len(r.tokens)] = torch.tensor(r.tokens)
    out[:, :T] = idx.cpu()
    return out.to(device)


def complete(model: GPT, tokenizer: Tokenizer, prompt: Union[str, Sequence[int], Sequence[Sequence[int]]],
             sampling: SamplingConfig = SamplingConfig(), num_samples: int = 1, seed: int = SEED,
             on_text: Optional[Callable[[str], None]] = None, stop_token: Optional[int] = None) -> list[str]:
    """Continue `prompt` num_samples times (one batch, sampling from one generator seeded with `seed`); return
    each continuation's text (without the prompt), ending before the stop token (default: the tokenizer's
    end-of-text). on_text: called with each new piece of the first sample's text as it is
    written (whole characters), for streaming.

    The prompt is text, token ids (a rendered chat, say), or several prompts of ids, each continued once, as one
    batch (greedy evaluation of many questions)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if isinstance(prompt, str):
        rows = [prompt_ids(tokenizer, prompt)] * num_samples
    elif prompt and not isinstance(prompt[0], int):
        rows = [list(p) for p in prompt]  # type: ignore[union-attr]
        if num_samples != 1:
            raise ValueError("a batch of prompts is continued once each: num_samples must be 1")
    else:
        rows = [list(prompt)] * num_samples  # type: ignore[arg-type]
    if sampling.max_new_tokens == 0:
        return [""] * len(rows)
    device = model.transformer.wte.weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    stop_token = tokenizer.eot_id if stop_token is None else stop_token
    requests = [Request(r, sampling.max_new_tokens, sampling.temperature, sampling.top_k, sampling.top_p, stop_token,
                        generator=generator) for r in rows]
    engine = Engine(model, len(rows), tokenizer, max_len=max(map(len, rows)) + sampling.max_new_tokens,
                    use_cache=sampling.use_cache, compile=sampling.compile)
    first = requests[0]
    engine.run(requests, on_step=None if on_text is None else lambda _: on_text(first.text.take()))  # type: ignore
    return [r.text.text for r in requests]  # type: ignore[union-attr]
