"""The HTTP server: OpenAI's routes over the worker, the chat page at `/`, and what keeps the server well
whatever clients do: a size limit on request bodies, an API key when one is set, 429 when the queue is full,
a client that goes away cancelling its generation, one log line per request, and client mistakes answered
4xx in OpenAI's error format (never a 5xx, never a crash).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from importlib import resources
from typing import Any, AsyncIterator, Callable, Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gptlab.serving.api import ApiError, Plan, Served, chat_plan, chunk, completion_plan, finish_reason, loads, response
from gptlab.serving.responses import Events, Reply, reply_plan, response_object
from gptlab.serving.worker import Busy, Job, Worker

log = logging.getLogger("gptlab.serve")
POLL_S = 0.25  # how often a whole (unstreamed) answer checks that its client is still there


class Generation:
    """One HTTP request's choices in the engine, their text as it arrives on the event loop."""

    def __init__(self, worker: Worker, plan: Plan) -> None:
        self.worker, self.plan = worker, plan
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        try:
            self.jobs = worker.submit(plan.requests, self._deliver)
        except Busy:
            raise ApiError(429, f"the server is busy ({worker.capacity} requests in flight): try again shortly",
                           code="server_busy", kind="rate_limit_error", headers={"Retry-After": "1"}) from None

    def _deliver(self, job: Job, piece: str, finished: bool, error: Optional[BaseException]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (job.index, piece, finished, error))

    async def pieces(self) -> AsyncIterator[tuple[int, str, Optional[str]]]:
        """(choice, its new text, its finish reason once over) until every choice is over; whatever ends this
        early (the client gone, an error) cancels the choices still running."""
        try:
            running = len(self.jobs)
            while running:
                index, piece, finished, error = await self.queue.get()
                if error is not None:
                    raise ApiError(500, f"generation failed: {type(error).__name__}: {error}", kind="server_error")
                running -= finished
                yield index, piece, finish_reason(self.plan.requests[index]) if finished else None
        finally:
            self.worker.cancel(self.jobs)


class Stream(StreamingResponse):
    """A streamed answer whose choices are cancelled however the response ends: sent whole, failed, or its
    client gone before the first event was even sent."""

    def __init__(self, generation: Generation, content: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.generation.worker.cancel(self.generation.jobs)


def sse(data: Any, event: Optional[str] = None) -> bytes:
    """One server-sent event; `event`: its name line, which the Responses API's events carry."""
    named = f"event: {event}\n" if event else ""
    return f"{named}data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


class Server:
    """The routes, over one worker and the model it serves."""

    def __init__(self, worker: Worker, served: Served, api_key: Optional[str] = None,
                 max_request_bytes: int = 1 << 20) -> None:
        self.worker, self.served, self.api_key, self.max_request_bytes = worker, served, api_key, max_request_bytes
        self.page = resources.files("gptlab.serving").joinpath("page.html").read_text(encoding="utf-8")

    def asgi(self) -> ASGIApp:
        """The application: the routes, their error handlers, and a log line per request around them."""
        routes = [Route("/", self.index), Route("/health", self.health),
                  Route("/v1/models", self.models), Route("/v1/models/{name:path}", self.model),
                  Route("/v1/chat/completions", self.chat, methods=["POST"]),
                  Route("/v1/completions", self.completions, methods=["POST"]),
                  Route("/v1/responses", self.responses, methods=["POST"]),
                  Route("/v1/responses/{id:path}", self.stored, methods=["GET", "DELETE"])]
        handlers: dict[Any, Any] = {ApiError: self.error, HTTPException: self.http_error, Exception: self.crash}
        return RequestLog(Starlette(routes=routes, exception_handlers=handlers))

    # --- routes ---

    async def index(self, request: HttpRequest) -> Response:
        return HTMLResponse(self.page, headers={"Cache-Control": "no-store"})

    async def health(self, request: HttpRequest) -> Response:
        e = self.worker  # served: requests run to their end; tokens: generated, since the start
        return JSONResponse({"status": "ok" if e.alive else "failed", "model": self.served.name,
                             "in_flight": e.in_flight, "capacity": e.capacity, "rows": e.rows, "served": e.served,
                             "tokens": e.tokens}, status_code=200 if e.alive else 503)

    def card(self) -> dict:
        return {"id": self.served.name, "object": "model", "created": self.served.created, "owned_by": "gptlab",
                "context_length": self.served.block_size, "chat": self.served.chat}

    async def models(self, request: HttpRequest) -> Response:
        self.authorize(request)
        return JSONResponse({"object": "list", "data": [self.card()]})

    async def model(self, request: HttpRequest) -> Response:
        self.authorize(request)
        if request.path_params["name"] != self.served.name:
            raise ApiError(404, f"the model {request.path_params['name']!r} does not exist here: this server "
                                f"serves {self.served.name!r}", "model", "model_not_found")
        return JSONResponse(self.card())

    async def chat(self, request: HttpRequest) -> Response:
        self.authorize(request)  # checking and encoding a long conversation happens off the event loop
        return await self.generate(request, await run_in_threadpool(chat_plan, self.served,
                                                                    loads(await self.body(request))))

    async def completions(self, request: HttpRequest) -> Response:
        self.authorize(request)
        return await self.generate(request, await run_in_threadpool(completion_plan, self.served,
                                                                    loads(await self.body(request))))

    async def responses(self, request: HttpRequest) -> Response:
        """OpenAI's Responses API: the same generation as chat/completions, in the Responses format."""
        self.authorize(request)
        reply = await run_in_threadpool(reply_plan, self.served, loads(await self.body(request)))
        return await self.generate(request, reply.plan, lambda: response_object(self.served, reply),
                                   lambda generation: self.events(generation, reply))

    async def stored(self, request: HttpRequest) -> Response:
        """GET or DELETE /v1/responses/ID: a 404 that says why (no response is kept), not "no route"."""
        self.authorize(request)
        raise ApiError(404, f"no response {request.path_params['id']!r} here: gptlab serve keeps no responses "
                            "(each is answered and forgotten; send the whole conversation as input)", "response_id")

    # --- the work ---

    async def generate(self, request: HttpRequest, plan: Plan, whole: Optional[Callable[[], dict]] = None,
                       stream: Optional[Callable[[Generation], AsyncIterator[bytes]]] = None) -> Response:
        """Run a plan: its answer whole (`whole()` once it is over; chat/completions' format without it) or
        streamed (the events of `stream(generation)`; chat/completions' chunks without it)."""
        generation = Generation(self.worker, plan)
        request.state.usage = generation
        headers = {"X-Gptlab-Dropped-Messages": str(plan.dropped)} if plan.dropped else {}
        if plan.stream:
            return Stream(generation, (stream or self.stream)(generation),
                          {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})
        pieces = generation.pieces()
        drain = asyncio.ensure_future(self.drain(pieces))
        while not drain.done():
            await asyncio.wait({drain}, timeout=POLL_S)
            if not drain.done() and await request.is_disconnected():
                drain.cancel()  # the choices are cancelled on the way out: their rows free at the next step
                await asyncio.gather(drain, return_exceptions=True)
                return Response(status_code=499)  # nobody is there to read it; the log says so
        drain.result()  # raises what generation raised
        return JSONResponse(whole() if whole else response(self.served, plan), headers=headers)

    @staticmethod
    async def drain(pieces: AsyncIterator[Any]) -> None:
        async for _ in pieces:
            pass

    async def stream(self, generation: Generation) -> AsyncIterator[bytes]:
        served, plan = self.served, generation.plan
        for i in range(len(plan.requests)):  # the role first, as OpenAI does
            yield sse(chunk(served, plan, i, "", None, first=True))
        pieces = generation.pieces()
        try:
            async for index, piece, finish in pieces:
                if piece or finish:
                    yield sse(chunk(served, plan, index, piece, finish))
        except ApiError as e:  # the status line has gone: the error travels as an event
            yield sse(e.body())
            return
        finally:  # the client gone (this generator closed or cancelled): the choices' rows free at once
            await pieces.aclose()
        if plan.include_usage:
            yield sse(chunk(served, plan, None, None, None, with_usage=True))
        yield sse("[DONE]")

    async def events(self, generation: Generation, reply: Reply) -> AsyncIterator[bytes]:
        """A streamed Responses answer: its typed events, each named (no [DONE]: response.completed ends it)."""
        events = Events(self.served, reply)
        for event in events.opening():
            yield sse(event, event["type"])
        pieces = generation.pieces()
        try:
            async for _, piece, _ in pieces:
                if piece:
                    yield sse(events.delta(piece), "response.output_text.delta")
        except ApiError as e:  # the status line has gone: the error travels as events
            for event in events.failed(e):
                yield sse(event, event["type"])
            return
        finally:  # the client gone: the choice's row frees at once
            await pieces.aclose()
        for event in events.closing():
            yield sse(event, event["type"])

    async def body(self, request: HttpRequest) -> bytes:
        """The request's body, refused past max_request_bytes before more of it is read."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_request_bytes:
            raise self.too_large(int(declared))
        chunks, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > self.max_request_bytes:
                raise self.too_large(size)
            chunks.append(part)
        return b"".join(chunks)

    def too_large(self, size: int) -> ApiError:
        return ApiError(413, f"the request body has {size} bytes, more than this server's limit of "
                             f"{self.max_request_bytes} (max_request_bytes=)", code="request_too_large")

    def authorize(self, request: HttpRequest) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "a valid API key is required: send the header 'Authorization: Bearer KEY' "
                                "(the key the server was started with)", code="invalid_api_key")

    # --- errors: OpenAI's body, whatever went wrong ---

    async def error(self, request: HttpRequest, e: Exception) -> Response:
        assert isinstance(e, ApiError)
        request.state.error = e.message
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    async def http_error(self, request: HttpRequest, e: Exception) -> Response:
        assert isinstance(e, HTTPException)
        message = {404: f"no route {request.url.path}: the API is under /v1 (chat/completions, completions, "
                        "responses, models)", 405: f"{request.method} is not allowed on {request.url.path}"}
        return await self.error(request, ApiError(e.status_code, message.get(e.status_code, str(e.detail)),
                                                  headers=dict(e.headers or {})))

    async def crash(self, request: HttpRequest, e: Exception) -> Response:
        log.exception("a request failed")
        return await self.error(request, ApiError(500, f"the server failed: {type(e).__name__}", kind="server_error"))


class RequestLog:
    """One line per request once its answer is sent: who, what, the status, how long, the tokens."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            state = scope.get("state", {})
            generation = state.get("usage")
            tokens = ""
            if generation is not None:
                made = sum(len(r.tokens) for r in generation.plan.requests)
                tokens = f" prompt={len(generation.plan.prompt)} completion={made}"
            client = scope.get("client") or ("-", 0)
            error = f" ({state['error']})" if state.get("error") else ""
            gone = " client gone" if status[0] in (0, 499) else ""
            log.info(f"{client[0]} {scope['method']} {scope['path']} {status[0] or 499} "
                     f"{time.perf_counter() - start:.2f}s{tokens}{gone}{error}")
