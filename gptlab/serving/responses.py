"""OpenAI's Responses API (`POST /v1/responses`, what OpenAI's newer SDKs and agent frameworks call first) over the
plans of chat/completions: a request's `input` and `instructions` -> a checked `Reply` (one Plan, decoded by the
same worker and engine), and what the model writes -> the response object, or its stream of typed events
(response.created ... response.output_text.delta ... response.completed).

A chat model takes `input` as a string (one user message) or a list of messages; a text model, which has no chat
template, takes a string only and continues it, as /v1/completions does. Settings gptlab cannot honour (tools,
previous_response_id, a JSON format, reasoning) are refused with OpenAI's error body naming them; those that ask
for nothing (`tools: []`, `text: {"format": {"type": "text"}}`, `store`, `metadata` ...) are accepted.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from gptlab.serving.api import (FREE, NEUTRAL, WHY, ApiError, Plan, Served, chat_prompt, check_keys, check_model,
                                conversation, known, max_tokens, prompt_tokens, room_after, sampling_plan, shown, text,
                                text_model, usage)
from gptlab.tokenizers.chat import end_id

INPUT_PARTS = ("input_text", "output_text")  # a message's text parts: its own, or an earlier answer's
# the Responses settings gptlab has no use for, accepted at the values that ask for nothing (and at null)
RESPONSE_NEUTRAL: dict[str, tuple] = {
    **{k: NEUTRAL[k] for k in ("tools", "tool_choice", "top_logprobs", "service_tier")},
    "include": ([],), "background": (False,), "reasoning": ({}, {"effort": "none"}),
    "previous_response_id": (), "conversation": (), "prompt": (), "max_tool_calls": ()}
RESPONSE_FREE: dict[str, type] = {**FREE, "stream_options": dict}  # stream_options: include_obfuscation
RESPONSE_WHY = {**WHY, "previous_response_id": "it keeps no responses: send the whole conversation as input",
                "conversation": "it keeps no conversations: send the whole conversation as input",
                "prompt": "it keeps no prompt templates", "max_tool_calls": "its models call no tools",
                "reasoning": "its models do not reason first", "background": "it answers while the client waits",
                "include": "it has nothing more to include"}
# seed: gptlab's own, as in chat/completions (OpenAI's Responses API has none): the same seed, the same answer
RESPONSE_KEYS = {"model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "stream", "seed",
                 "text", "truncation", *RESPONSE_NEUTRAL, *RESPONSE_FREE}
TEXT_FORMAT = {"type": "text"}


@dataclass
class Reply:
    """A checked Responses request: its Plan (one choice) and what the response object repeats of the request."""

    plan: Plan
    settings: dict  # instructions, max_output_tokens, temperature ...: echoed in every response object, as OpenAI
    id: str = field(default_factory=lambda: "resp_" + uuid.uuid4().hex)
    item_id: str = field(default_factory=lambda: "msg_" + uuid.uuid4().hex)
    created_at: int = field(default_factory=lambda: int(time.time()))


def reply_plan(served: Served, body: dict) -> Reply:
    check_keys(body, RESPONSE_KEYS, RESPONSE_NEUTRAL, RESPONSE_FREE, RESPONSE_WHY)
    check_model(served, body)
    check_text(body.get("text"))
    truncation = body.get("truncation") or "disabled"
    if truncation not in ("disabled", "auto"):
        raise ApiError(400, f"truncation must be \"auto\" or \"disabled\", got {shown(truncation)}", "truncation")
    asked = max_tokens(served, body, "max_output_tokens")
    sampling = {k: body[k] for k in ("temperature", "top_p", "seed", "stream") if k in body}
    if served.chat:
        said = said_messages(served, body)
        ids, dropped, new = chat_prompt(served, said, asked, "input", "max_output_tokens", truncation == "auto")
        plan = sampling_plan(served, sampling, True, ids, new, end_id(served.tokenizer), dropped)
    else:
        plan = sampling_plan(served, sampling, False, *text_prompt(served, body, asked), served.tokenizer.eot_id, 0)
    request = plan.requests[0]
    settings = {"instructions": body.get("instructions"), "max_output_tokens": asked,
                "metadata": body.get("metadata") or {}, "temperature": request.temperature,
                "top_p": request.top_p or 1.0, "tool_choice": body.get("tool_choice") or "auto",
                "parallel_tool_calls": body.get("parallel_tool_calls") is not False, "truncation": truncation,
                "user": body.get("user")}
    return Reply(plan, settings)


def check_text(value: Any) -> None:
    """`text`: the answer's format, plain text only (no JSON schema: gptlab cannot constrain its decoding)."""
    if value is None:
        return
    if not isinstance(value, dict) or set(value) - {"format", "verbosity"}:
        raise ApiError(400, f"text must be {{\"format\": {{\"type\": \"text\"}}}}, got {shown(value)}", "text")
    if value.get("format") not in (None, TEXT_FORMAT):
        raise ApiError(400, f"text.format={shown(value['format'])} is not supported by gptlab serve (it has no "
                            "structured (JSON) output): it takes only {\"type\": \"text\"}", "text.format")
    if value.get("verbosity") not in (None, "medium"):  # the default: gptlab's models have no other
        raise ApiError(400, f"text.verbosity={shown(value['verbosity'])} is not supported by gptlab serve: it "
                            "takes only \"medium\"", "text.verbosity")


def said_messages(served: Served, body: dict) -> list:
    """A chat model's conversation: `instructions` as a system message first, then `input` (a string: one user
    message; a list: messages)."""
    instructions = body.get("instructions")
    first = [] if not instructions else [
        {"role": "system", "content": known(served, text(instructions, "instructions"), "instructions")}]
    value = body.get("input")
    if value is None:
        raise ApiError(400, "input is required: a string, or a list of {role, content} ending with the user's",
                       "input")
    if isinstance(value, str):
        if not known(served, value, "input"):
            raise ApiError(400, "input is empty: the model answers a user message that has text", "input")
        return [*first, {"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise ApiError(400, f"input must be a string or a non-empty list of {{role, content}}, got {shown(value)}",
                       "input")
    for i, item in enumerate(value):  # messages only: no tool calls, their outputs, or earlier reasoning
        kind = item.get("type", "message") if isinstance(item, dict) else "message"
        if kind != "message":
            raise ApiError(400, f"input[{i}].type {shown(kind)} is not supported: only messages", f"input[{i}].type")
    return conversation(served, value, "input", INPUT_PARTS, first)


def text_prompt(served: Served, body: dict, asked: Optional[int]) -> tuple[list[int], int]:
    """A text model's prompt ids and new tokens: `input` as a string, continued as /v1/completions would (without
    max_output_tokens, up to the context: OpenAI's Responses API has no 16-token default)."""
    if body.get("instructions"):
        raise text_model(served, "instructions", "it has no system message to put instructions in; send the text "
                                                 "to continue as input")
    value = body.get("input")
    if value is None:
        raise ApiError(400, "input is required: the text for this text model to continue", "input")
    if not isinstance(value, str):
        raise text_model(served, "input", "send input as a string, which it continues (a list of messages needs "
                                          "a chat model)")
    ids = prompt_tokens(served, value, "input")
    return ids, room_after(served, ids, asked, "input", "max_output_tokens")


# --- the response object and its events ---

def output_item(reply: Reply, done: bool) -> dict:
    """The answer as an output message: empty while in progress, whole once done."""
    request = reply.plan.requests[0]
    content = [output_text(request.text.text)] if done else []  # type: ignore[union-attr]
    status = ("incomplete" if request.finish == "length" else "completed") if done else "in_progress"
    return {"id": reply.item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def response_object(served: Served, reply: Reply, status: Optional[str] = None,
                    error: Optional[ApiError] = None) -> dict:
    """The response: whole once generation is over (status completed, or incomplete where max_output_tokens cut
    it), or as streaming reports it at the start (status in_progress, no output yet) or on failure."""
    cut = reply.plan.requests[0].finish == "length"
    status = status or ("incomplete" if cut else "completed")
    over = status in ("completed", "incomplete")
    u = usage(reply.plan)
    return {
        "id": reply.id, "object": "response", "created_at": reply.created_at, "status": status,
        "background": False, "error": None if error is None else {"code": "server_error", "message": error.message},
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "model": served.name, "output": [output_item(reply, True)] if over else [],
        "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
        "store": False,  # nothing is kept: previous_response_id is refused
        "text": {"format": TEXT_FORMAT, "verbosity": "medium"}, "tools": [], **reply.settings,
        "usage": {"input_tokens": u["prompt_tokens"], "output_tokens": u["completion_tokens"],
                  "total_tokens": u["total_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
                  "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}} if over else None}


class Events:
    """A streamed response's events in order, each with its type and sequence_number (from 0)."""

    def __init__(self, served: Served, reply: Reply) -> None:
        self.served, self.reply, self.sequence = served, reply, 0
        self.at = {"item_id": reply.item_id, "output_index": 0, "content_index": 0}  # where the text goes

    def _event(self, kind: str, **fields: Any) -> dict:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def opening(self) -> list[dict]:
        response = response_object(self.served, self.reply, "in_progress")
        return [self._event("response.created", response=response),
                self._event("response.in_progress", response=response),
                self._event("response.output_item.added", output_index=0, item=output_item(self.reply, False)),
                self._event("response.content_part.added", **self.at, part=output_text(""))]

    def delta(self, piece: str) -> dict:
        return self._event("response.output_text.delta", **self.at, delta=piece, logprobs=[])

    def closing(self) -> list[dict]:
        """The text done, its part, its item, then the response: response.completed, or response.incomplete where
        max_output_tokens cut it (as OpenAI)."""
        item = output_item(self.reply, True)
        whole = response_object(self.served, self.reply)
        return [self._event("response.output_text.done", **self.at, text=item["content"][0]["text"], logprobs=[]),
                self._event("response.content_part.done", **self.at, part=item["content"][0]),
                self._event("response.output_item.done", output_index=0, item=item),
                self._event(f"response.{whole['status']}", response=whole)]

    def failed(self, error: ApiError) -> list[dict]:
        """Generation failed after the status line went: an error event, then response.failed."""
        return [self._event("error", code=error.code or "server_error", message=error.message, param=error.param),
                self._event("response.failed", response=response_object(self.served, self.reply, "failed", error))]
