"""One model, many clients: a thread steps the decoding engine (model/engine.py); HTTP handlers hand it requests
and read their text back as it comes.

Only the worker's thread touches the model and the engine. Other threads (the server's event loop) call
`submit` and `cancel`, which hold a lock for a moment and wake the thread. At most `rows + max_queue` requests
are in flight (being decoded, or waiting for a row): past that `submit` refuses at once (`Busy`), so a crowd
of clients gets a quick "try again" instead of an ever longer wait.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from gptlab.model import GPT, Engine, Request
from gptlab.tokenizers import Tokenizer

log = logging.getLogger("gptlab.serve")
# the worker's thread calls it with (job, the new final text, finished, error); it must only hand them on, quickly
Deliver = Callable[["Job", str, bool, Optional[BaseException]], None]


class Busy(Exception):
    """Every row is decoding and the waiting queue is full."""


@dataclass(eq=False)
class Job:
    request: Request
    deliver: Deliver
    index: int = 0  # which of its HTTP request's choices (n=) it is
    sent: int = 0  # tokens counted so far
    done: bool = field(default=False, repr=False)  # finished or cancelled: nothing more is delivered


class Worker:
    """Serves `model` through `rows` cache rows, with up to `max_queue` requests waiting for one."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, rows: int, max_queue: int, compile: bool = False) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        model.eval()  # serving: no dropout, for good (switching modes every step costs a walk over the modules)
        self.engine = Engine(model, rows, tokenizer, compile=compile)
        self.rows, self.capacity = rows, rows + max_queue
        self.in_flight = 0  # submitted and not yet finished or cancelled
        self.served = self.tokens = 0  # requests finished, tokens generated, since start
        self._wake = threading.Condition()
        self._adds: list[Job] = []
        self._cancels: list[Job] = []
        self._jobs: dict[int, Job] = {}  # id(request) -> its job; the worker's thread only
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="gptlab-worker", daemon=True)
        self._thread.start()

    def submit(self, requests: Sequence[Request], deliver: Deliver) -> list[Job]:
        """Queue requests (one HTTP request's choices: all or none); raises Busy when they would not fit."""
        with self._wake:
            if self._closed:
                raise RuntimeError("the worker is closed")
            if self.in_flight + len(requests) > self.capacity:
                raise Busy(f"{self.in_flight} requests in flight, room for {self.capacity}")
            jobs = [Job(r, deliver, index=i) for i, r in enumerate(requests)]
            self.in_flight += len(jobs)
            self._adds += jobs
            self._wake.notify()
        return jobs

    def cancel(self, jobs: Sequence[Job]) -> None:
        """Stop jobs now (their client went away, or a stop string ended them): their rows free at the next step.
        Finished jobs are left alone, so cancelling a whole request's jobs is always safe."""
        with self._wake:
            self._cancels += [j for j in jobs if not j.done]
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._adds or self._cancels or self._closed or self.engine.busy):
                    self._wake.wait()
                if self._closed:
                    return
                adds, self._adds, cancels, self._cancels = self._adds, [], self._cancels, []
            try:
                for job in adds:
                    self._jobs[id(job.request)] = job
                for job in adds:
                    self.engine.add(job.request)  # the server checked that prompt and max_tokens fit the context
                for job in cancels:
                    if not job.done:
                        self.engine.cancel(job.request)
                        self._finish(job)
                if self.engine.busy:
                    self._step()
            except Exception as e:  # out of memory, a device error: the requests in flight end with it, and the
                log.exception("the engine failed a step")  # worker goes on serving the next ones
                self._fail_all(e)

    def _step(self) -> None:
        for request in self.engine.step():
            job = self._jobs.get(id(request))
            if job is None:
                continue
            self.tokens += len(request.tokens) - job.sent
            job.sent = len(request.tokens)
            if request.finished:  # its stop token, a stop string or max_tokens
                self.served += 1
                self._finish(job)
            job.deliver(job, request.text.take(), request.finished, None)  # type: ignore[union-attr]

    def _fail_all(self, error: Exception) -> None:
        for job in list(self._jobs.values()):
            with contextlib.suppress(Exception):
                self.engine.cancel(job.request)
            self._finish(job)
            with contextlib.suppress(Exception):  # the event loop may be gone (the server stopping)
                job.deliver(job, "", True, error)

    def _finish(self, job: Job) -> None:
        job.done = True
        self._jobs.pop(id(job.request), None)
        with self._wake:
            self.in_flight -= 1
