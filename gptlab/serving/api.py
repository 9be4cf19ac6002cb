"""OpenAI's chat/completions and completions formats: a request's JSON -> a checked plan of what to generate,
and what the model writes -> the response's JSON (whole, or as streamed chunks).

Every mistake in a request is an `ApiError`: a 4xx status and OpenAI's error body, naming the field
(`{"error": {"message": ..., "type": "invalid_request_error", "param": "messages[1].role", "code": null}}`),
which the official clients turn into their own exception types.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from gptlab.model import OPENAI, Request, prompt_ids
from gptlab.model.chat import fit, room
from gptlab.tokenizers import Tokenizer
from gptlab.tokenizers.chat import Message, end_id, has_template

MAX_STOPS, MAX_STOP_CHARS = 4, 128  # as OpenAI
# OpenAI settings gptlab has no use for, accepted at the value that means "off"; any other value is refused
NEUTRAL = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logprobs": (False, None), "echo": (False,),
           "best_of": (1,), "suffix": (None,), "logit_bias": (None,), "user": None, "stream_options": None}
COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "seed", "stop", "stream", *NEUTRAL}
CHAT_KEYS = COMMON | {"messages", "max_completion_tokens"}
COMPLETION_KEYS = COMMON | {"prompt"}


class ApiError(Exception):
    """A request the server will not serve: the HTTP status and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error", headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Served:
    """What the server knows of the model it serves."""

    name: str  # the `model` a request must name
    tokenizer: Tokenizer
    block_size: int  # the context: prompt and answer together
    max_tokens: int  # the most new tokens one request may ask for
    max_n: int  # the most choices (n=) in one request
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def chat(self) -> bool:
        return has_template(self.tokenizer)


@dataclass
class Plan:
    """A checked request: the prompt's ids and one engine Request per choice (n=), which carries the stop strings
    and, as it runs, the choice's tokens and text."""

    chat: bool
    prompt: list[int]
    requests: list[Request]
    stream: bool
    include_usage: bool
    dropped: int = 0  # the oldest messages left out so the conversation fits the context
    id: str = ""
    created: int = 0  # one time for the whole answer, every chunk of it too

    def __post_init__(self) -> None:
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())


def loads(raw: bytes) -> dict:
    """The request body as a JSON object."""
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        body = json.loads(raw, parse_constant=no_constant)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def integer(body: dict, key: str, lo: int, hi: int) -> Optional[int]:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{key} must be an integer, got {_shown(value)}", key)
    if not lo <= value <= hi:
        raise ApiError(400, f"{key} must be between {lo} and {hi}, got {_shown(value)}", key)
    return value


def number(body: dict, key: str, default: float, lo: float, hi: float, above_lo: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"{key} must be a number, got {_shown(value)}", key)
    if not (lo < value <= hi if above_lo else lo <= value <= hi):
        bounds = f"in ({lo}, {hi}]" if above_lo else f"between {lo} and {hi}"
        raise ApiError(400, f"{key} must be {bounds}, got {_shown(value)}", key)
    return float(value)


def flag(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{key} must be true or false, got {_shown(value)}", key)
    return value


def text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"{param} must be a string, got {_shown(value)}", param)
    return value


def known(served: Served, value: str, param: str) -> str:
    """value, if the model's vocabulary can encode every character of it (a char vocabulary lacks those it never
    saw)."""
    lost = sorted(set(served.tokenizer.unknown(value)))
    if lost:
        shown = ", ".join(repr(c) for c in lost[:10])
        raise ApiError(400, f"{param} holds characters this model's vocabulary lacks: {shown}", param)
    return value


def check_keys(body: dict, allowed: set[str]) -> None:
    for key in body:
        if key not in allowed:
            raise ApiError(400, f"unrecognized request argument: {key} (gptlab serve does not support it)", key)
        if NEUTRAL.get(key) is not None and body[key] not in NEUTRAL[key]:
            raise ApiError(400, f"{key}={_shown(body[key])} is not supported by gptlab serve "
                                f"(only {' or '.join(_shown(v) for v in NEUTRAL[key])})", key)


def check_model(served: Served, body: dict) -> None:
    if "model" not in body:
        raise ApiError(400, f"model is required: this server serves {served.name!r}", "model")
    name = text(body["model"], "model")
    if name != served.name:
        raise ApiError(404, f"the model {name!r} does not exist here: this server serves {served.name!r} "
                            "(GET /v1/models)", "model", "model_not_found")


def max_tokens(served: Served, body: dict, key: str) -> Optional[int]:
    asked = integer(body, key, 1, 2**63)
    if asked is not None and asked > served.max_tokens:
        why = (f"the model's context of {served.block_size} tokens, less one for the prompt"
               if served.max_tokens == served.block_size - 1 else "the server's limit")
        raise ApiError(400, f"{key}={asked} is more than this server gives one request: {served.max_tokens} "
                            f"({why})", key, "context_length_exceeded")
    return asked


def stops(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ApiError(400, f"stop must be a string or a list of strings, got {_shown(value)}", "stop")
    if len(items) > MAX_STOPS or not all(0 < len(s) <= MAX_STOP_CHARS for s in items):
        raise ApiError(400, f"stop takes at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} "
                            f"characters, got {_shown(value)}", "stop")
    return items


def messages(served: Served, body: dict) -> list[Message]:
    """The conversation, checked: system (or developer) messages first, then user and assistant in turn,
    ending with the user's."""
    value = body.get("messages")
    if value is None:
        raise ApiError(400, "messages is required: a list of {role, content} ending with the user's", "messages")
    if not isinstance(value, list) or not value:
        raise ApiError(400, f"messages must be a non-empty list of {{role, content}}, got {_shown(value)}", "messages")
    out: list[Message] = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object with role and content, got {_shown(m)}", where)
        role = text(m.get("role"), f"{where}.role")
        role = "system" if role == "developer" else role
        before = out[-1]["role"] if out else None
        expected = {None: ("system", "user"), "system": ("system", "user"), "user": ("assistant",),
                    "assistant": ("user",)}[before]
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"{where}.role {role!r} is not supported: use system, user or assistant",
                           f"{where}.role")
        if role not in expected:
            after = f"after a {before} message" if before else "first"
            raise ApiError(400, f"{where}.role: {role} cannot come {after} (expected {' or '.join(expected)}): "
                                "system messages first, then user and assistant in turn", f"{where}.role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"{where}.content: only text parts are supported", f"{where}.content")
            content = "".join(p["text"] for p in content)
        content = known(served, text(content, f"{where}.content"), f"{where}.content")
        if role == "user" and not content:
            raise ApiError(400, f"{where}.content is empty: a user message needs text", f"{where}.content")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's: the model answers it", f"messages[{len(out) - 1}]")
    return out


def chat_plan(served: Served, body: dict) -> Plan:
    check_keys(body, CHAT_KEYS)
    check_model(served, body)
    if not served.chat:
        raise ApiError(400, f"{served.name} is a text model, not fine-tuned on conversations (its tokenizer has no "
                            "chat markers): use POST /v1/completions", "model")
    conversation = messages(served, body)
    newer, older = max_tokens(served, body, "max_completion_tokens"), max_tokens(served, body, "max_tokens")
    asked = older if newer is None else newer  # OpenAI's newer name wins
    block = served.block_size
    # OpenAI's API promises max_tokens of room beside the prompt; without it, the one rule of gptlab chat
    space = max(1, block - asked) if asked is not None else room(block, served.max_tokens)
    ids, dropped = fit(served.tokenizer, conversation, space)  # the oldest turns go first
    left = block - len(ids)  # without max_tokens, a last message longer than asked still gets what room is left
    if left < (asked or 1):
        raise ApiError(400, f"the conversation's last message(s) take {len(ids)} tokens"
                            f"{f' and max_tokens {asked}' if asked else ''}: more than the model's context of {block} "
                            f"tokens; shorten it{' or ask fewer tokens' if asked else ''}", "messages",
                       "context_length_exceeded")
    new = asked if asked is not None else min(served.max_tokens, left)
    return _plan(served, body, True, ids, new, end_id(served.tokenizer), dropped)


def completion_plan(served: Served, body: dict) -> Plan:
    check_keys(body, COMPLETION_KEYS)
    check_model(served, body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # the clients' list form of one prompt
    prompt = known(served, text(prompt, "prompt"), "prompt")
    try:
        ids = prompt_ids(served.tokenizer, prompt)
    except ValueError as e:
        raise ApiError(400, f"prompt: {e}", "prompt") from None
    block = served.block_size
    asked = max_tokens(served, body, "max_tokens")
    if len(ids) + (asked or 1) > block:
        raise ApiError(400, f"the prompt takes {len(ids)} tokens{f' and max_tokens {asked}' if asked else ''}: more "
                            f"than the model's context of {block} tokens", "max_tokens" if asked else "prompt",
                       "context_length_exceeded")
    new = asked if asked is not None else min(OPENAI.max_new_tokens, served.max_tokens, block - len(ids))
    return _plan(served, body, False, ids, new, served.tokenizer.eot_id, 0)


def _plan(served: Served, body: dict, chat: bool, ids: list[int], new: int, stop_token: Optional[int],
          dropped: int) -> Plan:
    temperature = number(body, "temperature", OPENAI.temperature, 0.0, 2.0)
    top_p = number(body, "top_p", OPENAI.top_p or 1.0, 0.0, 1.0, above_lo=True)
    n = integer(body, "n", 1, served.max_n) or 1
    seed = integer(body, "seed", -2**63, 2**63 - 1)
    seed = random.randrange(2**31) if seed is None else seed
    stream = flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise ApiError(400, "stream_options is {\"include_usage\": true|false}, with stream=true", "stream_options")
    include_usage = bool(options and flag(options, "include_usage"))
    stop = stops(body)
    requests = [Request(ids, new, temperature=temperature, top_k=OPENAI.top_k, top_p=None if top_p == 1.0 else top_p,
                        stop_token=stop_token, stop=stop, seed=(seed + i) % 2**63) for i in range(n)]
    return Plan(chat, ids, requests, stream, include_usage, dropped)


def finish_reason(request: Request) -> Optional[str]:
    return None if request.finish in (None, "cancelled") else request.finish


def usage(plan: Plan) -> dict:
    completion = sum(len(r.tokens) for r in plan.requests)
    return {"prompt_tokens": len(plan.prompt), "completion_tokens": completion,
            "total_tokens": len(plan.prompt) + completion}


def response(served: Served, plan: Plan) -> dict:
    """The whole answer (stream=false)."""
    choices = []
    for i, r in enumerate(plan.requests):
        text = r.text.text  # type: ignore[union-attr]
        content = {"message": {"role": "assistant", "content": text}} if plan.chat else {"text": text}
        choices.append({"index": i, **content, "logprobs": None, "finish_reason": finish_reason(r)})
    return {"id": plan.id, "object": "chat.completion" if plan.chat else "text_completion",
            "created": plan.created, "model": served.name, "choices": choices, "usage": usage(plan)}


def chunk(served: Served, plan: Plan, index: Optional[int], piece: Optional[str], finish: Optional[str],
          first: bool = False, with_usage: bool = False) -> dict:
    """One streamed chunk: a piece of choice `index`'s text (and its finish reason at the end); with_usage: the
    closing chunk with the usage counts and no choices."""
    if with_usage:
        choices: list[dict] = []
    elif plan.chat:
        delta = ({"role": "assistant", "content": piece or ""} if first else
                 {"content": piece} if piece else {})
        choices = [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]
    else:
        choices = [{"index": index, "text": piece or "", "logprobs": None, "finish_reason": finish}]
    out = {"id": plan.id, "object": "chat.completion.chunk" if plan.chat else "text_completion",
           "created": plan.created, "model": served.name, "choices": choices}
    if with_usage:
        out["usage"] = usage(plan)
    elif plan.include_usage:
        out["usage"] = None
    return out
