"""Many requests, one model: continuous batching over the KV caches' rows.

Each cache row holds one request. A request waits until a row is free, its prompt is read into that row alone
(`GPT.forward(rows=)`), and from then on every step gives every active row one new token at its own position
(`input_pos` of shape (B, 1)), so requests join and leave the batch between any two steps, and a finished or
cancelled one frees its row for the next at once. Each request samples with its own settings and its own
generator, so its tokens are the ones it gets served alone (tests/test_batching.py).

Plain PyTorch and token ids: no threads, no text. A server drives `step()` from its loop (gptlab serve).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Optional

import torch

from gptlab.model.gpt import GPT
from gptlab.model.sampling import SEED, sample_next


@dataclass(eq=False)
class Request:
    """One prompt's generation: its settings, then what it has produced so far."""

    prompt: list[int]
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    stop_token: Optional[int] = None  # generation ends after it (it is kept in `tokens`)
    seed: int = SEED
    tokens: list[int] = field(default_factory=list)  # the new tokens, in order
    finished: bool = False  # max_new_tokens reached, the stop token written, or cancelled

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("a request needs at least one prompt token")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


class ContinuousBatcher:
    """Serves requests through `rows` cache rows of `model`; call `step()` while `busy`."""

    def __init__(self, model: GPT, rows: int, vocab_size: Optional[int] = None) -> None:
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.model, self.vocab_size = model, vocab_size
        self.device = model.transformer.wte.weight.device
        self.waiting: deque[Request] = deque()
        self.slots: list[Optional[Request]] = [None] * rows
        self._generators: dict[int, torch.Generator] = {}
        self._next = torch.zeros(rows, 1, dtype=torch.long, device=self.device)  # each row's newest token
        self._at = torch.zeros(rows, 1, dtype=torch.long, device=self.device)  # ... and the slot it goes into
        model.eval()  # serving: no dropout, for good (switching modes every step costs a walk over the modules)
        model.setup_caches(rows, model.config.block_size)

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or any(r is not None for r in self.slots)

    def add(self, request: Request) -> Request:
        """Queue a request; it starts at the next step a row is free. Prompt and new tokens must fit the context."""
        room = self.model.config.block_size
        if len(request.prompt) + request.max_new_tokens > room:
            raise ValueError(f"a prompt of {len(request.prompt)} tokens and {request.max_new_tokens} new ones do not "
                             f"fit the model's context of {room} tokens")
        self._generators[id(request)] = torch.Generator(device=self.device).manual_seed(request.seed)
        self.waiting.append(request)
        return request

    def cancel(self, request: Request) -> None:
        """Stop a request now (its client went away): its row is free for the next one at the next step."""
        request.finished = True
        if request in self.waiting:
            self.waiting.remove(request)
            self._generators.pop(id(request), None)
        self._retire()

    @torch.inference_mode()
    def step(self) -> list[Request]:
        """Admit waiting requests into free rows (each prompt read, its first token sampled), then one token for
        every active request, the new ones too. Returns the requests that got tokens in this step."""
        advanced: list[Request] = []
        for r, slot in enumerate(self.slots):
            if slot is None and self.waiting:
                req = self.slots[r] = self.waiting.popleft()
                prompt = torch.tensor([req.prompt], device=self.device)
                n = prompt.size(1)
                logits = self.model(prompt, input_pos=torch.arange(n, device=self.device),
                                    rows=torch.tensor([r], device=self.device))[0][:, -1]
                token = self._sample(req, logits)
                self._next[r] = token[0]
                self._at[r, 0] = n
                self._record(req, int(token))
                advanced.append(req)
        active = [r for r, req in enumerate(self.slots) if req is not None and not req.finished]
        if not active:
            self._retire()
            return advanced
        if len(active) == len(self.slots):  # every row, each at its own slot
            which = None
            logits = self.model(self._next, input_pos=self._at.clone())[0][:, -1]
        else:  # only the busy rows: one request alone costs what it costs unbatched
            which = torch.tensor(active, device=self.device)
            logits = self.model(self._next[which], input_pos=self._at[which], rows=which)[0][:, -1]
        tokens = torch.cat([self._sample(self.slots[r], logits[i:i + 1])  # type: ignore[arg-type]
                            for i, r in enumerate(active)])  # (A, 1), each with its request's own settings
        if which is None:
            self._next.copy_(tokens)
            self._at += 1
        else:
            self._next[which], self._at[which] = tokens, self._at[which] + 1
        for r, value in zip(active, tokens.view(-1).tolist()):  # one read from the device for all the rows
            self._record(self.slots[r], value)  # type: ignore[arg-type]
            advanced.append(self.slots[r])  # type: ignore[arg-type]
        self._retire()
        return advanced

    def _sample(self, req: Request, logits: torch.Tensor) -> torch.Tensor:
        """The request's next token (1, 1) from its logits (1, vocab), with its own settings and generator."""
        vocab = logits[:, :self.vocab_size] if self.vocab_size else logits
        return sample_next(vocab, req.temperature, req.top_k, req.top_p, self._generators[id(req)])

    @staticmethod
    def _record(req: Request, token: int) -> None:
        req.tokens.append(token)
        if len(req.tokens) >= req.max_new_tokens or (req.stop_token is not None and token == req.stop_token):
            req.finished = True

    def _retire(self) -> None:
        """Free the rows of finished requests."""
        for r, req in enumerate(self.slots):
            if req is not None and req.finished:
                self.slots[r] = None
                self._generators.pop(id(req), None)
                self._next[r, 0], self._at[r, 0] = 0, 0
