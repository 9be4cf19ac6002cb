"""OpenAI's chat/completions and completions formats: a request's JSON -> a checked plan of what to generate,
and what the model writes -> the response's JSON (whole, or as streamed chunks). (The Responses API, over the
same plans: responses.py.)

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
from typing import Any, Optional, Sequence

from gptlab.model import OPENAI, Request, prompt_ids
from gptlab.model.chat import fit, room
from gptlab.tokenizers import Tokenizer
from gptlab.tokenizers.chat import Message, end_id, has_template

MAX_STOPS, MAX_STOP_CHARS = 4, 128  # as OpenAI
# OpenAI settings gptlab has no use for, accepted at the values that ask it for nothing (off, empty, the default:
# what clients such as the openai SDK, LangChain or agent frameworks send unasked) and at null; any other value is
# refused, naming the setting (a client that asks for tools or JSON output must not get plain text back unawares)
NEUTRAL: dict[str, tuple] = {
    "presence_penalty": (0,), "frequency_penalty": (0,), "logit_bias": ({},), "logprobs": (False,),
    "top_logprobs": (0,), "echo": (False,), "best_of": (1,), "suffix": (), "response_format": ({"type": "text"},),
    "tools": ([],), "tool_choice": ("none", "auto"), "functions": ([],), "function_call": ("none", "auto"),
    "service_tier": ("auto", "default"), "modalities": (["text"],), "reasoning_effort": ("none",)}
# settings that change nothing gptlab does, whatever their value (of the right type): OpenAI's bookkeeping
FREE: dict[str, type] = {"user": str, "metadata": dict, "store": bool, "parallel_tool_calls": bool,
                         "prompt_cache_key": str, "safety_identifier": str}
WHY = {  # why a setting is refused, where there is more to say than "not supported"
    "tools": "its models call no tools", "tool_choice": "its models call no tools",
    "functions": "its models call no tools", "function_call": "its models call no tools",
    "response_format": "it has no structured (JSON) output", "reasoning_effort": "its models do not reason first",
    "logprobs": "it returns no log probabilities", "top_logprobs": "it returns no log probabilities"}
COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "seed", "stop", "stream", "stream_options", *NEUTRAL,
          *FREE}
CHAT_KEYS = COMMON | {"messages", "max_completion_tokens"}
COMPLETION_KEYS = COMMON | {"prompt"}
TEXT_PARTS = ("text",)  # chat/completions' content parts that gptlab reads (images, audio, files: refused)


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


def shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def integer(body: dict, key: str, lo: int, hi: int) -> Optional[int]:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{key} must be an integer, got {shown(value)}", key)
    if not lo <= value <= hi:
        raise ApiError(400, f"{key} must be between {lo} and {hi}, got {shown(value)}", key)
    return value


def number(body: dict, key: str, default: float, lo: float, hi: float, above_lo: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"{key} must be a number, got {shown(value)}", key)
    if not (lo < value <= hi if above_lo else lo <= value <= hi):
        bounds = f"in ({lo}, {hi}]" if above_lo else f"between {lo} and {hi}"
        raise ApiError(400, f"{key} must be {bounds}, got {shown(value)}", key)
    return float(value)


def flag(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{key} must be true or false, got {shown(value)}", key)
    return value


def text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"{param} must be a string, got {shown(value)}", param)
    return value


def known(served: Served, value: str, param: str) -> str:
    """value, if the model's vocabulary can encode every character of it (a char vocabulary lacks those it never
    saw)."""
    lost = sorted(set(served.tokenizer.unknown(value)))
    if lost:
        shown = ", ".join(repr(c) for c in lost[:10])
        raise ApiError(400, f"{param} holds characters this model's vocabulary lacks: {shown}", param)
    return value


def _same(a: Any, b: Any) -> bool:
    """a == b, with true and 1 (false and 0) told apart: logprobs=0 is not logprobs=false."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def check_keys(body: dict, allowed: set[str], neutral: dict[str, tuple] = NEUTRAL, free: dict[str, type] = FREE,
               why: dict[str, str] = WHY) -> None:
    """Every key one the route knows; a setting gptlab does not honour only at a value that asks for nothing."""
    for key, value in body.items():
        if key not in allowed:
            raise ApiError(400, f"unrecognized request argument: {key} (gptlab serve does not support it)", key)
        if value is None:
            continue  # null: the setting left at OpenAI's default
        if key in neutral and not any(_same(value, v) for v in neutral[key]):
            because = f" ({why[key]})" if key in why else ""
            raise ApiError(400, f"{key}={shown(value)} is not supported by gptlab serve{because}: it takes only "
                                f"{' or '.join(shown(v) for v in (*neutral[key], None))}", key)
        if key in free and not isinstance(value, free[key]):
            kind = {str: "a string", dict: "an object", bool: "true or false"}[free[key]]
            raise ApiError(400, f"{key} must be {kind}, got {shown(value)}", key)


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
        raise ApiError(400, f"stop must be a string or a list of strings, got {shown(value)}", "stop")
    if len(items) > MAX_STOPS or not all(0 < len(s) <= MAX_STOP_CHARS for s in items):
        raise ApiError(400, f"stop takes at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} "
                            f"characters, got {shown(value)}", "stop")
    return items


def messages(served: Served, body: dict) -> list[Message]:
    """chat/completions' conversation, checked: system (or developer) messages first, then user and assistant in
    turn, ending with the user's."""
    value = body.get("messages")
    if value is None:
        raise ApiError(400, "messages is required: a list of {role, content} ending with the user's", "messages")
    if not isinstance(value, list) or not value:
        raise ApiError(400, f"messages must be a non-empty list of {{role, content}}, got {shown(value)}", "messages")
    return conversation(served, value, "messages", TEXT_PARTS)


def conversation(served: Served, items: list, where: str, parts: tuple[str, ...],
                 before: Sequence[Message] = ()) -> list[Message]:
    """The messages of a request's `where` list (after the messages `before` it, checked already), each error
    naming its place (`messages[1].role`): system (or developer) messages first, then user and assistant in turn,
    ending with the user's; content a string or a list of text parts of the types `parts`."""
    out: list[Message] = list(before)
    for i, m in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{at} must be an object with role and content, got {shown(m)}", at)
        role = text(m.get("role"), f"{at}.role")
        role = "system" if role == "developer" else role
        last = out[-1]["role"] if out else None
        expected = {None: ("system", "user"), "system": ("system", "user"), "user": ("assistant",),
                    "assistant": ("user",)}[last]
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"{at}.role {role!r} is not supported: use system, user or assistant", f"{at}.role")
        if role not in expected:
            after = f"after a {last} message" if last else "first"
            raise ApiError(400, f"{at}.role: {role} cannot come {after} (expected {' or '.join(expected)}): "
                                "system messages first, then user and assistant in turn", f"{at}.role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") in parts and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"{at}.content: only text parts ({', '.join(parts)}) are supported",
                               f"{at}.content")
            content = "".join(p["text"] for p in content)
        content = known(served, text(content, f"{at}.content"), f"{at}.content")
        if role == "user" and not content:
            raise ApiError(400, f"{at}.content is empty: a user message needs text", f"{at}.content")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's: the model answers it", f"{where}[{len(items) - 1}]")
    return out


def text_model(served: Served, param: str, instead: str) -> ApiError:
    """The refusal of a conversation for a model without a chat template, with what to do instead."""
    return ApiError(400, f"{served.name} is a text model, not fine-tuned on conversations (its tokenizer has no "
                         f"chat markers): {instead}", param)


def chat_plan(served: Served, body: dict) -> Plan:
    check_keys(body, CHAT_KEYS)
    check_model(served, body)
    if not served.chat:
        raise text_model(served, "model", "use POST /v1/completions")
    said = messages(served, body)
    newer, older = max_tokens(served, body, "max_completion_tokens"), max_tokens(served, body, "max_tokens")
    asked = older if newer is None else newer  # OpenAI's newer name wins
    ids, dropped, new = chat_prompt(served, said, asked, asked_key="max_tokens" if newer is None else
                                    "max_completion_tokens")
    return sampling_plan(served, body, True, ids, new, end_id(served.tokenizer), dropped)


def chat_prompt(served: Served, said: list[Message], asked: Optional[int], where: str = "messages",
                asked_key: str = "max_tokens", drop: bool = True) -> tuple[list[int], int, int]:
    """A conversation's prompt ids, how many of its oldest messages were left out to fit the context, and how
    many new tokens the answer gets. drop=False: a conversation that does not fit whole is refused instead."""
    block = served.block_size
    # OpenAI's API promises max_tokens of room beside the prompt; without it, the one rule of gptlab chat
    space = max(1, block - asked) if asked is not None else room(block, served.max_tokens) if drop else block - 1
    ids, dropped = fit(served.tokenizer, said, space)  # the oldest turns go first
    if dropped and not drop:
        raise ApiError(400, f"the conversation takes more than the model's context of {block} tokens"
                            f"{f' with {asked_key} {asked}' if asked else ''}: shorten it, or set "
                            "truncation=\"auto\" to leave out its oldest turns", where, "context_length_exceeded")
    left = block - len(ids)  # without max_tokens, a last message longer than asked still gets what room is left
    if left < (asked or 1):
        raise ApiError(400, f"the conversation's last message(s) take {len(ids)} tokens"
                            f"{f' and {asked_key} {asked}' if asked else ''}: more than the model's context of {block} "
                            f"tokens; shorten it{' or ask fewer tokens' if asked else ''}", where,
                       "context_length_exceeded")
    return ids, dropped, asked if asked is not None else min(served.max_tokens, left)


def completion_plan(served: Served, body: dict) -> Plan:
    check_keys(body, COMPLETION_KEYS)
    check_model(served, body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # the clients' list form of one prompt
    ids = prompt_tokens(served, prompt, "prompt")
    asked = max_tokens(served, body, "max_tokens")
    new = room_after(served, ids, asked, "prompt", "max_tokens")
    new = min(OPENAI.max_new_tokens, new) if asked is None else new  # OpenAI's completions stop at 16 unasked
    return sampling_plan(served, body, False, ids, new, served.tokenizer.eot_id, 0)


def prompt_tokens(served: Served, prompt: Any, param: str) -> list[int]:
    """A text prompt's ids, as the model continues it."""
    prompt = known(served, text(prompt, param), param)
    try:
        return prompt_ids(served.tokenizer, prompt)
    except ValueError as e:
        raise ApiError(400, f"{param}: {e}", param) from None


def room_after(served: Served, ids: list[int], asked: Optional[int], param: str, asked_key: str) -> int:
    """The new tokens a prompt of `ids` gets: `asked` where it fits the context, else what the context leaves."""
    block = served.block_size
    if len(ids) + (asked or 1) > block:
        raise ApiError(400, f"the {param} takes {len(ids)} tokens{f' and {asked_key} {asked}' if asked else ''}: "
                            f"more than the model's context of {block} tokens", asked_key if asked else param,
                       "context_length_exceeded")
    return asked if asked is not None else min(served.max_tokens, block - len(ids))


def sampling_plan(served: Served, body: dict, chat: bool, ids: list[int], new: int, stop_token: Optional[int],
                  dropped: int) -> Plan:
    """The Plan of a prompt's ids: body's sampling settings (temperature, top_p, n, seed, stop, stream) checked,
    one engine Request per choice."""
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
