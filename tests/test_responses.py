"""gptlab serve's Responses API (POST /v1/responses) and the neutral values clients send unasked, through the openai
SDK (responses.create, responses.stream) and LangChain's ChatOpenAI (chat/completions and the Responses API):
answers equal to chat/completions' for the same greedy request, streamed text equal to the whole, max_output_tokens
giving an incomplete response, settings gptlab cannot honour refused with 400 naming them.

The servers run in this process (uvicorn in a thread, one per model, for the whole module): no start-up of a
`gptlab serve` process per test, a tiny model, a few tokens an answer."""

from __future__ import annotations

import json
import socket
import threading
import time
import typing
from pathlib import Path
from typing import Iterator

import pytest
import torch

from gptlab import checkpoint
from test_serve import lively_checkpoint

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from gptlab.serving.api import Served  # noqa: E402  (needs starlette's extra: after the skips)
from gptlab.serving.app import Server  # noqa: E402
from gptlab.serving.worker import Worker  # noqa: E402

QUESTIONS = ["Q: 7-2", "hi", "Hello!", "Name a colour.", "Why?", "ok", "Spell cat", "abc", "What is 2 + 3?"]


class InProcess:
    """`gptlab serve`'s application over a checkpoint, on a free local port, in a thread of this process."""

    def __init__(self, ckpt: Path, name: str) -> None:
        loaded = checkpoint.load(ckpt)
        block = loaded.model.config.block_size
        self.worker = Worker(loaded.model, loaded.tokenizer, rows=4, max_queue=8)
        app = Server(self.worker, Served(name, loaded.tokenizer, block, max_tokens=block - 1, max_n=4)).asgi()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.02)
        assert self.server.started, "the server did not start"

    def client(self) -> "openai.OpenAI":
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)

    def post(self, path: str, body: dict) -> "httpx.Response":
        return httpx.post(f"{self.url}{path}", json=body, timeout=30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.worker.close()


def conforms(data: dict) -> None:
    """A response object or stream event, validated (the SDK only constructs them, unchecked) against the openai
    SDK's own model of it: every field it requires there, of its type."""
    from openai.types.responses import Response, ResponseStreamEvent

    if data.get("object") == "response":
        Response.model_validate(data)
        return
    union = typing.get_args(ResponseStreamEvent)[0]  # Annotated[Union[...], discriminator]
    by_type = {typing.get_args(m.model_fields["type"].annotation)[0]: m for m in typing.get_args(union)}
    by_type[data["type"]].model_validate(data)


def stream_events(server: InProcess, body: dict) -> list[dict]:
    """A streamed response's events, read raw: each one's `event:` name checked against its type."""
    with httpx.stream("POST", f"{server.url}/v1/responses", json={**body, "stream": True}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    names = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    events = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]
    assert names == [e["type"] for e in events]
    return events


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[InProcess, InProcess]]:
    """A chat model ("assistant") and a text model ("writer"), each served for the whole module."""
    tmp = tmp_path_factory.mktemp("responses")
    # one thread for torch while they serve: a tiny model's steps gain nothing from more, and on cores busy with
    # other work (the suite's other process) their threads wait for each other (steps 20x slower, and unsteady)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    chat = InProcess(lively_checkpoint(tmp / "assistant.ckpt", chat=True), "assistant")
    text = InProcess(lively_checkpoint(tmp / "writer.ckpt", chat=False), "writer")
    yield chat, text
    chat.stop()
    text.stop()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chat(served) -> InProcess:
    return served[0]


@pytest.fixture(scope="module")
def writer(served) -> InProcess:
    return served[1]


@pytest.fixture(scope="module")
def finished(chat) -> str:
    """A question whose greedy answer ends by itself (its end marker) within the context: a completed response."""
    for q in QUESTIONS:
        r = chat.client().responses.create(model="assistant", input=q, temperature=0)
        if r.status == "completed":
            return q
    pytest.fail("no question's greedy answer ends by itself: the test model changed?")


def test_text_input_answers_as_chat_completions_does(chat, finished):
    c = chat.client()
    r = c.responses.create(model="assistant", input=finished, temperature=0)
    same = c.chat.completions.create(model="assistant", messages=[{"role": "user", "content": finished}],
                                     temperature=0)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "assistant" and r.status == "completed"
    assert r.incomplete_details is None and r.error is None
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert item.content[0].type == "output_text" and item.content[0].annotations == []
    assert r.output_text == item.content[0].text == same.choices[0].message.content  # the one engine, one answer
    assert (r.usage.input_tokens, r.usage.output_tokens) == (same.usage.prompt_tokens, same.usage.completion_tokens)
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    conforms(chat.post("/v1/responses", {"model": "assistant", "input": finished, "temperature": 0}).json())


def test_messages_with_instructions_are_the_conversation_with_a_system_message_first(chat):
    conversation = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"},
                    {"role": "user", "content": [{"type": "input_text", "text": "And "},
                                                 {"type": "input_text", "text": "3 + 4?"}]}]
    c = chat.client()
    r = c.responses.create(model="assistant", instructions="Be brief.", input=conversation, temperature=0,
                           max_output_tokens=12)
    messages = [{"role": "system", "content": "Be brief."}, *conversation[:2],
                {"role": "user", "content": "And 3 + 4?"}]
    same = c.chat.completions.create(model="assistant", messages=messages, temperature=0, max_tokens=12)
    assert r.output_text == same.choices[0].message.content
    assert r.usage.input_tokens == same.usage.prompt_tokens and r.instructions == "Be brief."
    # the forms clients send: "type": "message" items, an earlier answer as output_text parts, developer messages
    replay = [{"type": "message", "role": "developer", "content": "Be brief."}, {**conversation[0], "type": "message"},
              {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
               "content": [{"type": "output_text", "text": "5", "annotations": []}]}, conversation[2]]
    assert c.responses.create(model="assistant", input=replay, temperature=0,
                              max_output_tokens=12).output_text == r.output_text


def test_max_output_tokens_cuts_the_answer_as_an_incomplete_response(chat, writer):
    for server, model in ((chat, "assistant"), (writer, "writer")):
        r = server.client().responses.create(model=model, input="What is 2 + 3?", max_output_tokens=3, temperature=0)
        assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
        assert r.output[0].status == "incomplete" and r.usage.output_tokens == 3 and r.max_output_tokens == 3


def test_the_stream_has_openais_events_and_the_text_of_the_whole_answer(chat, finished):
    c = chat.client()
    whole = c.responses.create(model="assistant", input=finished, temperature=0)
    with c.responses.stream(model="assistant", input=finished, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * len(deltas),
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert len(deltas) > 1 and "".join(deltas) == events[-4].text == final.output_text == whole.output_text
    assert final.status == "completed" and final.usage.output_tokens == whole.usage.output_tokens
    assert events[0].response.status == "in_progress" and events[0].response.id == final.id


def test_a_cut_stream_ends_with_response_incomplete_and_sampling_follows_the_seed(chat):
    """As OpenAI: a stream that max_output_tokens cuts ends with response.incomplete. A seed (gptlab's own, as in
    chat/completions) gives the same sample streamed and whole."""
    body = {"model": "assistant", "input": "hi", "max_output_tokens": 6, "temperature": 0.9, "seed": 5}
    whole = chat.post("/v1/responses", body).json()
    events = stream_events(chat, body)
    for data in (whole, *events):
        conforms(data)
    assert events[-1]["type"] == "response.incomplete"
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == whole["output"][0]["content"][0]["text"] == events[-1]["response"]["output"][0]["content"][0]["text"]
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_generation_that_fails_mid_stream_ends_with_an_error_event_and_response_failed(chat, monkeypatch):
    """The status line has gone when the engine fails: the stream says so in OpenAI's events, and the server
    serves the next request."""
    engine = chat.worker.engine
    step = engine.step

    def failing_once() -> list:
        monkeypatch.setattr(engine, "step", step)
        raise RuntimeError("the device fell over")

    monkeypatch.setattr(engine, "step", failing_once)
    events = stream_events(chat, {"model": "assistant", "input": "hi", "max_output_tokens": 4})
    for data in events:
        conforms(data)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert "the device fell over" in events[-2]["message"] and events[-1]["response"]["status"] == "failed"
    assert chat.client().responses.create(model="assistant", input="hi", max_output_tokens=2).usage.output_tokens == 2


def test_a_text_model_continues_a_string_and_refuses_messages(writer):
    c = writer.client()
    r = c.responses.create(model="writer", input="ROMEO:", max_output_tokens=5, temperature=0)
    same = c.completions.create(model="writer", prompt="ROMEO:", max_tokens=5, temperature=0)
    assert r.output_text == same.choices[0].text and r.usage.input_tokens == same.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError, match="text model") as e:  # as chat/completions does
        c.responses.create(model="writer", input=[{"role": "user", "content": "hi"}])
    assert e.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError, match="text model") as e:
        c.responses.create(model="writer", input="ROMEO:", instructions="Be brief.")
    assert e.value.body["param"] == "instructions"


def test_truncation_disabled_refuses_a_conversation_too_long_and_auto_drops_its_oldest_turns(chat):
    said = [{"role": "user", "content": "a" * 20}, {"role": "assistant", "content": "b" * 20},
            {"role": "user", "content": "c" * 20}]
    r = chat.post("/v1/responses", {"model": "assistant", "input": said, "max_output_tokens": 20})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "input" and "truncation" in r.json()["error"]["message"]
    r = chat.post("/v1/responses", {"model": "assistant", "input": said, "max_output_tokens": 20,
                                    "truncation": "auto"})
    assert r.status_code == 200 and r.headers["x-gptlab-dropped-messages"] == "2"
    assert r.json()["truncation"] == "auto"


# what clients send unasked, or at the value that asks for nothing: accepted
CHAT_NEUTRAL = {"logit_bias": {}, "response_format": {"type": "text"}, "tools": [], "tool_choice": "none",
                "parallel_tool_calls": True, "service_tier": "auto", "store": False, "metadata": {"run": "a"},
                "user": "u1", "presence_penalty": 0.0, "frequency_penalty": 0, "logprobs": False, "seed": 3,
                "stream": False, "n": 1, "modalities": ["text"], "prompt_cache_key": "k", "safety_identifier": "s",
                "top_logprobs": None, "functions": None}
COMPLETION_NEUTRAL = {"logit_bias": {}, "user": "u1", "echo": False, "best_of": 1, "suffix": None, "logprobs": None,
                      "presence_penalty": 0, "frequency_penalty": 0.0, "seed": 3}
RESPONSE_NEUTRAL = {"store": False, "parallel_tool_calls": False, "tools": [], "tool_choice": "auto",
                    "text": {"format": {"type": "text"}}, "truncation": "disabled", "metadata": {"run": "a"},
                    "user": "u1", "service_tier": "default", "include": [], "background": False, "reasoning": None,
                    "previous_response_id": None, "stream_options": {"include_obfuscation": False},
                    "top_logprobs": 0, "safety_identifier": "s", "prompt_cache_key": "k"}


def test_neutral_values_are_accepted_on_every_route(chat):
    said = [{"role": "user", "content": "hi"}]
    for path, body in [("/v1/chat/completions", {"messages": said, "max_tokens": 2, **CHAT_NEUTRAL}),
                       ("/v1/completions", {"prompt": "hi", "max_tokens": 2, **COMPLETION_NEUTRAL}),
                       ("/v1/responses", {"input": "hi", "max_output_tokens": 2, **RESPONSE_NEUTRAL}),
                       ("/v1/responses", {"input": "hi", "max_output_tokens": 2, "store": True, "text": {}})]:
        r = chat.post(path, {"model": "assistant", **body})
        assert r.status_code == 200, (path, r.text)
    echoed = r.json()  # the response object repeats the request's settings, as OpenAI's does
    assert echoed["metadata"] == {} and echoed["store"] is False and echoed["tools"] == []
    assert chat.post("/v1/responses", {"model": "assistant", "input": "hi", "max_output_tokens": 2,
                                       "metadata": {"run": "a"}}).json()["metadata"] == {"run": "a"}


REFUSED = [  # (route, settings, the param the 400 names)
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
    ("/v1/chat/completions", {"logit_bias": {"5": 10}}, "logit_bias"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/chat/completions", {"service_tier": "flex"}, "service_tier"),
    ("/v1/chat/completions", {"logprobs": True}, "logprobs"),
    ("/v1/chat/completions", {"metadata": "x"}, "metadata"),
    ("/v1/chat/completions", {"store": "yes"}, "store"),
    ("/v1/completions", {"logprobs": 0}, "logprobs"),
    ("/v1/completions", {"logit_bias": {"5": 10}}, "logit_bias"),
    ("/v1/responses", {"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
    ("/v1/responses", {"tools": [{"type": "web_search"}]}, "tools"),
    ("/v1/responses", {"previous_response_id": "resp_1"}, "previous_response_id"),
    ("/v1/responses", {"conversation": "conv_1"}, "conversation"),
    ("/v1/responses", {"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}, "text.format"),
    ("/v1/responses", {"text": {"verbosity": "low"}}, "text.verbosity"),
    ("/v1/responses", {"reasoning": {"effort": "high"}}, "reasoning"),
    ("/v1/responses", {"background": True}, "background"),
    ("/v1/responses", {"include": ["message.output_text.logprobs"]}, "include"),
    ("/v1/responses", {"truncation": "middle"}, "truncation"),
    ("/v1/responses", {"stop": ["x"]}, "stop"),  # chat/completions' setting, not the Responses API's
    ("/v1/responses", {"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]}, "input[0].type"),
    ("/v1/responses", {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content"),
    ("/v1/responses", {"input": [{"role": "assistant", "content": "hi"}]}, "input[0].role"),
    ("/v1/responses", {"input": ""}, "input"),
    ("/v1/responses", {"input": None}, "input"),
    ("/v1/responses", {"max_output_tokens": 0}, "max_output_tokens"),
    ("/v1/responses", {"max_output_tokens": 64}, "max_output_tokens"),
    ("/v1/responses", {"model": "gpt-5"}, "model"),
]


@pytest.mark.parametrize("path,settings,param", REFUSED, ids=[f"{p[4:]}-{n}" for p, _, n in REFUSED])
def test_what_gptlab_cannot_honour_is_a_400_naming_the_param(chat, path, settings, param):
    base = {"/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]}, "/v1/completions":
            {"prompt": "hi"}, "/v1/responses": {"input": "hi"}}[path]
    limit = "max_output_tokens" if path == "/v1/responses" else "max_tokens"
    r = chat.post(path, {"model": "assistant", **base, limit: 2, **settings})
    assert r.status_code == (404 if param == "model" else 400), r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    assert set(r.json()) == {"error"} and set(error) == {"message", "type", "param", "code"}  # OpenAI's body


def test_the_sdk_raises_its_own_errors_and_no_response_is_kept(chat):
    c = chat.client()
    with pytest.raises(openai.BadRequestError, match="tools") as e:
        c.responses.create(model="assistant", input="hi", tools=[{"type": "function", "name": "f", "parameters": {}}])
    assert e.value.body["param"] == "tools"
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        c.responses.create(model="assistant", input="hi", previous_response_id="resp_1")
    with pytest.raises(openai.NotFoundError, match="keeps no responses"):
        c.responses.retrieve("resp_1")
    assert httpx.get(f"{chat.url}/v1/nothing").json()["error"]["message"].count("responses") == 1


@pytest.fixture(scope="module")
def ChatOpenAI():
    """LangChain's client, where it is installed (the dev extra has it): its tests are skipped without it."""
    return pytest.importorskip("langchain_openai", reason="pip install langchain-openai").ChatOpenAI


@pytest.mark.parametrize("responses_api", [False, True], ids=["chat-completions", "responses"])
def test_langchain_invokes_streams_and_batches(chat, ChatOpenAI, responses_api):
    model = ChatOpenAI(model="assistant", base_url=f"{chat.url}/v1", api_key="unused", temperature=0, max_tokens=8,
                       max_retries=0, use_responses_api=responses_api)
    questions = ["What is 2 + 3?", "Spell cat"]
    expected = [chat.client().chat.completions.create(
        model="assistant", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}],
        temperature=0, max_tokens=8).choices[0].message.content for q in questions]
    asked = [[("system", "Be brief."), ("human", q)] for q in questions]
    answer = model.invoke(asked[0])
    assert answer.text == expected[0] and 0 < answer.usage_metadata["output_tokens"] <= 8
    assert "".join(chunk.text for chunk in model.stream(asked[0])) == expected[0]
    assert [m.text for m in model.batch(asked)] == expected
