"""gptlab serve: real servers on free local ports. OpenAI's API through the official client and raw HTTP, every
kind of bad request answered 4xx in OpenAI's error format (the server unharmed), concurrent greedy answers
equal to the model's own, the queue's 429, a client that goes away freeing its row, the API key, the page."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch
from omegaconf import OmegaConf

from gptlab import checkpoint
from gptlab.model import GPT, GPTConfig
from gptlab.model import SamplingConfig, complete
from gptlab.rundir import RunDir
from gptlab.serve import model_name
from gptlab.tokenizers import CharTokenizer
from gptlab.tokenizers.chat import chat_tokenizer, end_id, render
from conftest import REPO

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

KEY = "sk-test-1234"
ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'+-=\n"


def lively_checkpoint(path: Path, chat: bool, **shape) -> Path:
    """Large random weights (greedy answers that depend on every token of the prompt), saved as a checkpoint."""
    tok = CharTokenizer.train(ALPHABET)
    tok = chat_tokenizer(tok) if chat else tok
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{"vocab_size": tok.vocab_size, "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 64,
                             "dropout": 0.0, "tie_weights": False, **shape}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3) if p.dim() > 1 else None
    return checkpoint.save(path, model.eval(), tok)


class Running:
    """A `gptlab serve` process on a free port: its URL, and its log (stderr) so far."""

    def __init__(self, tmp: Path, *args: str, env: dict | None = None) -> None:
        self.log_path = tmp / f"serve-{time.monotonic_ns()}.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "gptlab.serve", "port=0", "device=cpu", *args], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env={**os.environ, **(env or {})})
        line = self.proc.stdout.readline()  # the first line says where it listens
        if not line.startswith("serving"):
            self.stop()
            raise AssertionError(f"the server did not start: {line}{self.log_path.read_text()}")
        self.url = line.split(" at ")[1].split()[0]

    def lines(self) -> list[str]:
        self.log.flush()
        return self.log_path.read_text().splitlines()

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health").json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    ckpt = lively_checkpoint(tmp / "assistant.ckpt", chat=True)
    server = Running(tmp, f"ckpt_path={ckpt}", "batch_size=4", "max_queue=8", "max_request_bytes=20000")
    server.ckpt = ckpt
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    """A text model with a long context, one row and no queue, on every interface, behind an API key from the
    environment."""
    tmp = tmp_path_factory.mktemp("serve-keyed")
    ckpt = lively_checkpoint(tmp / "writer.ckpt", chat=False, block_size=1024, n_layer=4, n_embd=128)
    server = Running(tmp, f"ckpt_path={ckpt}", "batch_size=1", "max_queue=0", "host=0.0.0.0",
                     env={"GPTLAB_API_KEY": KEY})
    yield server
    server.stop()


def client(server: Running, key: str = "unused") -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def expected_answer(ckpt: Path, messages: list[dict], max_tokens: int) -> str:
    """The model's own greedy answer, served alone (gptlab.model's one path from a prompt to text)."""
    loaded = checkpoint.load(ckpt)
    ids, _ = render(loaded.tokenizer, messages, reply=True)
    sampling = SamplingConfig(max_new_tokens=max_tokens, temperature=0.0, top_k=None)
    return complete(loaded.model, loaded.tokenizer, ids, sampling, stop_token=end_id(loaded.tokenizer))[0]


def test_concurrent_greedy_answers_equal_each_served_alone(chat_server):
    questions = ["What is 2 + 3?", "Hello!", "Name a colour.", "Count to four", "Why?", "Spell cat", "ok", "Q: 7-2"]
    expected = [expected_answer(chat_server.ckpt, [{"role": "user", "content": q}], 20) for q in questions]
    assert len(set(expected)) > len(questions) // 2  # the answers depend on the question
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        reply = client(chat_server).chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": questions[i]}], max_tokens=20, temperature=0)
        answers[i] = reply.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [answers[i] for i in range(len(questions))] == expected  # 8 requests through 4 rows, batched


def test_the_openai_client_gets_equal_text_streamed_and_whole(chat_server):
    c = client(chat_server)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
                {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 3 + 4?"}]
    settings = dict(model="assistant", messages=messages, max_tokens=15, temperature=0.9, top_p=0.95, seed=7, n=2)
    whole = c.chat.completions.create(**settings)
    streamed = ["", ""]
    finish = [None, None]
    for part in c.chat.completions.create(**settings, stream=True):
        for choice in part.choices:
            streamed[choice.index] += choice.delta.content or ""
            finish[choice.index] = choice.finish_reason or finish[choice.index]
    assert [ch.message.content for ch in whole.choices] == streamed
    assert [ch.finish_reason for ch in whole.choices] == finish
    assert streamed[0] != streamed[1]  # n=2: two samples, seeds seed and seed + 1
    assert whole.usage.prompt_tokens == len(render(checkpoint.load(chat_server.ckpt).tokenizer, messages, True)[0])
    assert whole.usage.completion_tokens == sum(
        1 + len(ch.message.content) if ch.finish_reason == "stop" else 15 for ch in whole.choices)
    # completions: the same text streamed and whole, any model
    text = c.completions.create(model="assistant", prompt="ROMEO:", max_tokens=12, seed=3)
    pieces = "".join(p.choices[0].text for p in c.completions.create(model="assistant", prompt="ROMEO:",
                                                                    max_tokens=12, seed=3, stream=True))
    assert text.choices[0].text == pieces and text.usage.completion_tokens == 12


def test_stop_strings_cut_the_answer_streamed_and_whole(chat_server):
    c = client(chat_server)
    full = c.completions.create(model="assistant", prompt="abc", max_tokens=30, temperature=0).choices[0].text
    stop = full[10:12]
    cut = full[:full.find(stop)]
    whole = c.completions.create(model="assistant", prompt="abc", max_tokens=30, temperature=0, stop=[stop, "@@"])
    assert whole.choices[0].text == cut and whole.choices[0].finish_reason == "stop"
    streamed = "".join(p.choices[0].text for p in c.completions.create(
        model="assistant", prompt="abc", max_tokens=30, temperature=0, stop=stop, stream=True))
    assert streamed == cut


def test_stream_ends_with_done_and_usage_when_asked(chat_server):
    with httpx.stream("POST", f"{chat_server.url}/v1/chat/completions", json={
            "model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_a_long_conversation_loses_its_oldest_turns_and_a_long_last_message_gets_the_room_left(chat_server):
    old = [{"role": "user", "content": "a" * 20}, {"role": "assistant", "content": "b" * 20}]
    last = [{"role": "user", "content": "c" * 20}]
    r = httpx.post(f"{chat_server.url}/v1/chat/completions",
                   json={"model": "assistant", "messages": old + last, "temperature": 0})
    assert r.status_code == 200 and r.headers["x-gptlab-dropped-messages"] == "2"
    answer = r.json()["choices"][0]["message"]["content"]
    assert answer == expected_answer(chat_server.ckpt, last, 64 - 23)  # what is left of the context: 41 tokens
    long = client(chat_server).chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "a" * 50}], temperature=0)
    assert long.usage.prompt_tokens == 53 and long.usage.completion_tokens <= 11  # <|user|> 50 <|end|> <|assistant|>


BAD = [  # (body, status, the field the error names)
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (b'{"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400, None),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ({"model": "assistant", "messages": []}, 400, "messages"),
    ({"model": "assistant"}, 400, "messages"),
    ({"model": "assistant", "messages": "hi"}, 400, "messages"),
    ({"model": "assistant", "messages": [{"role": "user", "content": ""}]}, 400, "messages[0].content"),
    ({"model": "assistant", "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ({"model": "assistant", "messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages[0].role"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     400, "messages[1].role"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
     400, "messages[1].role"),
    ({"model": "assistant", "messages": [{"role": "tool", "content": "a"}]}, 400, "messages[0].role"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     400, "messages[1]"),
    ({"model": "assistant", "messages": [["user", "hi"]]}, 400, "messages[0]"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "naïve"}]}, 400, "messages[0].content"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "a" * 80}]}, 400, "messages"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, 400, "max_tokens"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**30}, 400, "max_tokens"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 60}, 400, "messages"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2.5}, 400, "max_tokens"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400,
     "temperature"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "temperature": -0.5}, 400,
     "temperature"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400, "top_p"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "n": 0}, 400, "n"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "n": 1000}, 400, "n"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "n": True}, 400, "n"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "seed": "x"}, 400, "seed"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]},
     400, "stop"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "stop": [""]}, 400, "stop"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "stop": "x" * 129}, 400, "stop"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3,
      "max_tokens": "abc"}, 400, "max_tokens"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "stream_options": {"x": 1}}, 400,
     "stream_options"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "presence_penalty": 1}, 400,
     "presence_penalty"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "hi"}] * 3000}, 413, None),
]


@pytest.mark.parametrize("body,status,param", BAD, ids=range(len(BAD)))
def test_a_bad_request_is_a_4xx_in_openai_format_naming_the_field(chat_server, body, status, param):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{chat_server.url}/v1/chat/completions", content=raw,
                   headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] and error["message"]


def test_bad_completions_and_routes_and_the_server_is_unharmed(chat_server):
    post = lambda path, body: httpx.post(f"{chat_server.url}{path}", json=body)  # noqa: E731
    assert post("/v1/completions", {"model": "assistant", "prompt": "a" * 64}).json()["error"]["param"] == "prompt"
    assert post("/v1/completions", {"model": "assistant", "prompt": ["a", "b"]}).status_code == 400
    assert post("/v1/completions", {"model": "assistant", "prompt": "hi", "echo": True}).status_code == 400
    assert httpx.get(f"{chat_server.url}/v1/nothing").status_code == 404
    assert httpx.get(f"{chat_server.url}/v1/chat/completions").status_code == 405
    assert httpx.get(f"{chat_server.url}/v1/models/other").status_code == 404
    # the official client raises its own exception types
    c = client(chat_server)
    with pytest.raises(openai.BadRequestError, match="messages\\[0\\].role"):
        c.chat.completions.create(model="assistant", messages=[{"role": "assistant", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="context"):
        c.completions.create(model="assistant", prompt="hi", max_tokens=64)
    # after all of them: healthy, answering, and one log line per request
    assert chat_server.health()["status"] == "ok"
    assert c.models.list().data[0].id == "assistant"
    assert c.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "hi"}],
                                     max_tokens=3).choices[0].message.content is not None
    requests = [ln.split() for ln in chat_server.lines() if ln.split()[2:3] in (["GET"], ["POST"])]
    assert len(requests) >= 3 and not [r for r in requests if r[4].startswith("5")]  # no 5xx, ever
    assert not any("Traceback" in ln for ln in chat_server.lines())
    assert any("GET /v1/nothing 404" in ln for ln in chat_server.lines())


def test_the_api_key_is_required_when_set(keyed_server):
    assert any("listening on every interface" in line for line in keyed_server.lines())  # host=0.0.0.0 says so
    with pytest.raises(openai.AuthenticationError):
        client(keyed_server, "wrong").models.list()
    assert httpx.get(f"{keyed_server.url}/v1/models").status_code == 401
    assert client(keyed_server, KEY).models.list().data[0].id == "writer"
    with pytest.raises(openai.BadRequestError, match="text model"):  # no chat markers: refused, with the way out
        client(keyed_server, KEY).chat.completions.create(model="writer", messages=[{"role": "user", "content": "a"}])


def test_a_full_queue_answers_429_and_a_client_that_leaves_frees_its_row(keyed_server):
    """One row, no queue: while a long answer streams, another request is refused with 429 and Retry-After; once
    its client disconnects, the row is free at once (the answer cut short) and the next request is served."""
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "writer", "prompt": "Once", "max_tokens": 1000, "stream": True, "temperature": 0}
    before = keyed_server.health()
    with httpx.stream("POST", f"{keyed_server.url}/v1/completions", json=body, headers=auth) as r:
        lines = r.iter_lines()  # kept: a dropped iterator closes the stream
        next(lines)  # it is decoding
        refused = httpx.post(f"{keyed_server.url}/v1/completions", json={**body, "stream": False}, headers=auth)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        with pytest.raises(openai.RateLimitError):
            client(keyed_server, KEY).completions.create(model="writer", prompt="x", max_tokens=2)
    for _ in range(300):  # the client has gone: its row frees within a step or two
        health = keyed_server.health()
        if health["in_flight"] == 0:
            break
        time.sleep(0.05)
    assert health["in_flight"] == 0 and health["served"] == before["served"]  # cancelled, not finished
    assert health["tokens"] - before["tokens"] < 1000
    served = client(keyed_server, KEY).completions.create(model="writer", prompt="x", max_tokens=2)
    assert served.usage.completion_tokens == 2
    # a client that gives up on a whole (unstreamed) answer frees its row too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{keyed_server.url}/v1/completions", json={**body, "stream": False}, headers=auth, timeout=0.5)
    for _ in range(300):
        if keyed_server.health()["in_flight"] == 0:
            break
        time.sleep(0.05)
    assert keyed_server.health()["in_flight"] == 0
    assert any(" 499 " in ln and "client gone" in ln for ln in keyed_server.lines())
    assert not any("Traceback" in ln for ln in keyed_server.lines())


@pytest.mark.skipif(shutil.which("node") is None, reason="no node to check the page's script with")
def test_the_page_script_parses(tmp_path):
    page = (REPO / "gptlab/serving/page.html").read_text()
    (tmp_path / "page.js").write_text(page.split("<script>")[1].split("</script>")[0])
    p = subprocess.run(["node", "--check", str(tmp_path / "page.js")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_the_page_is_self_contained_and_served_without_a_key(keyed_server):
    r = httpx.get(keyed_server.url)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "v1/chat/completions" in page and 'id="input"' in page and 'id="new"' in page
    assert "http://" not in page and "https://" not in page  # no CDN: nothing loads from elsewhere


def test_a_gpt2_folder_serves_completions(hf_gpt2, tmp_path):
    server = Running(tmp_path, f"ckpt_path={hf_gpt2}")
    try:
        c = client(server)
        assert c.models.list().data[0].id == "tiny-gpt2"
        out = c.completions.create(model="tiny-gpt2", prompt="ROMEO:", max_tokens=5, temperature=0)
        assert out.usage.completion_tokens <= 5 and out.choices[0].finish_reason in ("stop", "length")
    finally:
        server.stop()


NO_RECORD = "(no record)"


def run_folder(root: Path, relative: str, experiment: str | None) -> Path:
    """A run folder's layout without training: checkpoints/, and Hydra's record of the run's choices."""
    run = RunDir(root / relative)
    run.checkpoints.mkdir(parents=True)
    if experiment != NO_RECORD:
        run.record.mkdir()
        choices = {"experiment": experiment, "model": "small"}
        OmegaConf.save({"hydra": {"runtime": {"choices": choices}}}, run.hydra_record)
    return run.path


@pytest.mark.parametrize("folder, experiment, name", [
    ("outputs/sft", None, "sft"),
    ("outputs/sft", "sft_tasks", "sft"),  # the name the user gave the folder comes first
    ("outputs/2026-12-07/00-37-20", None, "2026-12-07/00-37-20"),
    ("outputs/2026-12-07/00-37-20", NO_RECORD, "2026-12-07/00-37-20"),
    ("outputs/2026-12-07/00-37-20", "shakespeare_cpu", "shakespeare_cpu"),
    ("outputs/multirun/2026-12-07/10-00-00/3", None, "2026-12-07/10-00-00/3"),
    ("outputs/multirun/2026-12-07/10-00-00/3", "ablation", "ablation/3")])
def test_the_served_name_is_the_runs_name(tmp_path, folder, experiment, name):
    run = run_folder(tmp_path, folder, experiment)
    assert model_name(str(run)) == name
    assert model_name(str(run / "checkpoints" / "best.ckpt")) == name


def test_a_name_with_slashes_is_one_model_in_the_routes(tmp_path):
    """A dated run's name has '/' in it: /v1/models/NAME and requests naming it find it (in-process: no port)."""
    from starlette.testclient import TestClient

    from gptlab.serving.api import Served
    from gptlab.serving.app import Server
    from gptlab.serving.worker import Worker

    loaded = checkpoint.load(lively_checkpoint(tmp_path / "m.ckpt", chat=False))
    name = "2026-12-07/10-00-00/3"
    worker = Worker(loaded.model, loaded.tokenizer, rows=1, max_queue=0)
    try:
        http = TestClient(Server(worker, Served(name, loaded.tokenizer, 64, max_tokens=63, max_n=1)).asgi())
        assert http.get(f"/v1/models/{name}").json()["id"] == name
        assert http.get("/v1/models/2026-12-07%2F10-00-00%2F3").json()["id"] == name  # a client that escapes '/'
        assert http.get("/v1/models/10-00-00/3").status_code == 404
        out = http.post("/v1/completions", json={"model": name, "prompt": "a", "max_tokens": 2, "temperature": 0})
        assert out.status_code == 200 and out.json()["model"] == name
    finally:
        worker.close()


def test_start_up_mistakes_are_one_line(tmp_path):
    ckpt = lively_checkpoint(tmp_path / "m.ckpt", chat=True)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    # (a missing checkpoint and a bad setting are one line through the code every command shares: tested there)
    for args, says in [([f"ckpt_path={ckpt}", f"port={port}"], f"port {port} is in use"),
                       ([f"ckpt_path={ckpt}", "max_tokens=64"], "max_tokens=64 leaves no room")]:
        p = subprocess.run([sys.executable, "-m", "gptlab.serve", *args], cwd=REPO, capture_output=True, text=True)
        assert p.returncode == 2 and p.stderr.startswith("error: ") and says in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
    taken.close()


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@contextlib.contextmanager
def browser_page() -> Iterator["playwright.sync_api.Page"]:
    """A page in headless Chromium that reaches nothing on the network."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the page test drives Chromium with playwright")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=[
            "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            yield browser.new_page()
        finally:
            browser.close()


def greedy_settings(page, max_tokens: str, key: str = "") -> None:
    """With the keyboard alone: open the settings, temperature 0, max tokens, the API key; focus stays on the key."""
    page.focus("#settings summary")
    page.keyboard.press("Enter")  # the settings open
    page.focus("#temperature")
    page.keyboard.press("Control+A")
    page.keyboard.type("0")
    page.keyboard.press("Tab")
    page.keyboard.type(max_tokens)
    page.keyboard.press("Tab")  # the API key
    if key:
        page.keyboard.type(key)


def send(page, text: str, done: str) -> None:
    """Type text into the focused message box, press Enter, wait until the JavaScript condition `done` holds."""
    assert page.evaluate("document.activeElement.id") == "input"
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    page.wait_for_function(done, timeout=30_000)


@pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine (install chromium to test the page)")
def test_the_page_in_headless_chromium_streams_an_answer(chat_server):
    """Type a message with the keyboard alone, press Enter, see the streamed answer arrive."""
    expected = expected_answer(chat_server.ckpt, [{"role": "user", "content": "What is 2 + 3?"}], 12)
    with browser_page() as page:
        page.goto(chat_server.url)
        assert page.evaluate("document.activeElement.id") == "input"  # ready to type
        greedy_settings(page, max_tokens="12")
        page.keyboard.press("Tab")  # the message box
        send(page, "What is 2 + 3?", "document.querySelector('#stop').disabled === true && "
                                     "document.querySelectorAll('.msg.assistant').length === 1")
        assert page.inner_text(".msg.user") == "What is 2 + 3?"
        assert page.eval_on_selector(".msg.assistant", "e => e.textContent") == expected
        page.keyboard.press("Alt+n")
        assert page.locator(".msg.assistant").count() == 0


@pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine (install chromium to test the page)")
def test_the_page_on_a_text_model_streams_a_continuation(keyed_server):
    """A text model (no chat template): the server's 401 shown until the key is typed, then the completion mode:
    a prompt in, its greedy continuation streamed in after it; the chat's system prompt disabled."""
    body = {"model": "writer", "prompt": "ROMEO:", "max_tokens": 12, "temperature": 0}
    whole = httpx.post(f"{keyed_server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    with browser_page() as page:
        page.goto(keyed_server.url)
        page.wait_for_selector(".msg.error")  # no key yet: the server's refusal, and where the key goes
        assert "API key" in page.inner_text(".msg.error") and page.is_disabled("#send")
        greedy_settings(page, max_tokens="12", key=KEY)
        page.keyboard.press("Tab")  # the key is taken: the page asks again, and learns it is a text model
        page.wait_for_function("!document.querySelector('#send').disabled")
        assert "text model" in page.inner_text("#mode") and page.inner_text("#new") == "Clear"
        assert page.is_disabled("#system") and page.is_enabled("#input") and page.is_disabled("#stop")
        send(page, "ROMEO:", "document.querySelector('.completion') && document.querySelector('#stop').disabled === true")
        assert page.inner_text(".completion .prompt") == "ROMEO:"
        assert page.eval_on_selector(".continuation", "e => e.textContent") == whole.json()["choices"][0]["text"]
        assert page.is_enabled("#input") and page.is_enabled("#send")
        assert page.locator(".msg.error").count() == 1  # the one from before the key


def test_the_serve_benchmark_runs_without_errors():
    """scripts/bench_serve.py at a tiny size: concurrent streaming clients, every stream complete."""
    p = subprocess.run([sys.executable, "scripts/bench_serve.py", "--clients", "3", "--requests", "6", "--single", "1",
                        "--max-tokens", "4", "--batch-size", "2"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    last = p.stdout.strip().splitlines()[-2:]
    assert last[0] == "errors: 0" and last[1].startswith("batched/single tokens/s: ")


@pytest.mark.parametrize("setting, says", [({"batch_size": 0}, "batch_size must be >= 1"),
                                           ({"max_queue": -1}, "max_queue must be >= 0"),
                                           ({"port": 70000}, "port must be between 0 and 65535"),
                                           ({"max_tokens": 0}, "max_tokens must be >= 1"),
                                           ({"dtype": "int8"}, "dtype=int8 is not one of")])
def test_bad_server_settings_are_refused_with_the_fix(setting, says):
    from gptlab.config import ServeConfig

    with pytest.raises(ValueError, match=says):
        ServeConfig(ckpt_path="run", **setting)
