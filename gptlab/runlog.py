"""A run's own log and heartbeat, for the duration of a training job (`kept`, around gptlab.train.train):

- everything the job prints (stdout and stderr: the start block, progress, warnings, the end lines, the `error:`
  line) also goes into the run folder's log file, `<run dir>/train.log`, as whole lines;
- a heartbeat fills any silence of `every_s` seconds (data preparation, building or compiling the model, a long
  step, the final validation, the end sample) with a line saying what is under way and the time budget left.

Not Lightning's: the job prints before and after `trainer.fit`. The progress callbacks (gptlab.lit.callbacks) say
what is under way through `say`; only rank 0 of a DDP run keeps a log.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TextIO

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # a bar's cursor moves and colours: noise in a file
Clock = Callable[[], float]
# a phase that began this recently (a step under way): work flows, and its own line (progress by the clock) is due
FLOWING_S = 1.0


def duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Lines:
    """One stream's text as whole lines for a file. A carriage return redraws the line under way (a bar): the
    file gets the line as it finally stands, and as it stood at most every `every_s` seconds in between."""

    def __init__(self, every_s: float = 10.0, clock: Clock = time.monotonic) -> None:
        self.every_s, self.clock = every_s, clock
        self.pending = ""
        self._kept, self._kept_line = clock(), ""

    def feed(self, text: str) -> list[str]:
        """The lines `text` completes."""
        done = []
        for part in re.split(r"(\r\n|\r|\n)", ANSI.sub("", text)):
            if part in ("\n", "\r\n"):
                done.append(self.pending)
                self.pending, self._kept = "", self.clock()
            elif part == "\r":
                redrawn = self.pending.strip() and self.pending != self._kept_line
                if redrawn and self.clock() - self._kept >= self.every_s:
                    done.append(self.pending)
                    self._kept, self._kept_line = self.clock(), self.pending
                self.pending = ""
            else:
                self.pending += part
        return done

    def rest(self) -> list[str]:
        """The line under way, if it says anything (a bar never ended by a newline)."""
        line, self.pending = self.pending, ""
        return [line] if line.strip() else []


class RunLog:
    """The log file: lines appended as they complete, each stream's whole, flushed at once (`tail -f` follows the
    run). Opened, for appending (a resume goes on in its log), once its folder exists: Hydra makes it before the
    job, Lightning for a run called in-process; until then lines wait here, and a job that never made its folder
    leaves none."""

    def __init__(self, path: Path, clock: Clock = time.monotonic) -> None:
        self.path, self.clock = Path(path), clock
        self._streams: dict[str, Lines] = {}
        self._waiting: list[str] = []
        self._file: Optional[TextIO] = None
        self._failed = False
        self._lock = threading.Lock()  # the heartbeat's thread prints too

    def write(self, stream: str, text: str) -> None:
        with self._lock:
            self._put(self._streams.setdefault(stream, Lines(clock=self.clock)).feed(text))

    def _put(self, lines: list[str]) -> None:
        if self._failed:
            return
        self._waiting += lines
        try:
            if self._file is None and self._waiting and self.path.parent.is_dir():
                self._file = open(self.path, "a", encoding="utf-8", errors="replace")
            if self._file is not None and self._waiting:
                self._file.write("".join(line + "\n" for line in self._waiting))
                self._file.flush()
                self._waiting = []
        except OSError:  # a full disk, a folder taken away: the run goes on, on the terminal only
            self._failed, self._waiting = True, []

    def close(self) -> None:
        with self._lock:
            for lines in self._streams.values():
                self._put(lines.rest())
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None


class Heartbeat:
    """A line whenever nothing was printed for `every_s` seconds: what is under way, for how long, and the time
    budget left. `due` is the rule, on the clock it is given; `beat` runs it in a thread."""

    def __init__(self, since: float, every_s: float = 10.0, clock: Clock = time.monotonic) -> None:
        self.every_s, self.clock = every_s, clock
        self.phase, self.phase_since = "starting up and preparing the data", since
        self.last = since  # when something was last printed: the process's start-up is a silence too
        self.left: Optional[Callable[[], Optional[float]]] = None  # seconds of the time budget left (TimeBudget)
        self.redraw: Optional[Callable[[], None]] = None  # a bar on the screen: drawn again instead (a line breaks it)

    def heard(self) -> None:
        self.last = self.clock()

    def say(self, phase: str) -> None:
        if phase != self.phase:
            self.phase, self.phase_since = phase, self.clock()

    def due(self, now: float) -> Optional[str]:
        """The line to print at `now`, or None."""
        if now - self.last < self.every_s or now - self.phase_since < FLOWING_S:
            return None
        left = self.left() if self.left is not None else None
        budget = f"; {duration(max(left, 0.0))} of the time budget left" if left is not None else ""
        return f"... {self.phase} ({duration(now - self.phase_since)}{budget})"

    def beat(self, stop: threading.Event) -> None:
        # awake 4 times a second at most: every_s may be changed (by the progress bar's settings) while it waits
        while not stop.wait(max(0.05, min(self.last + self.every_s - self.clock(), 0.25))):
            line = self.due(self.clock())
            if line is not None and self.redraw is not None:
                with contextlib.suppress(Exception):  # a bar closing meanwhile: the next beat will do
                    self.redraw()
                self.heard()  # drawn or not, the next beat is every_s away
            elif line is not None:
                sys.stdout.write(line + "\n")  # one write: a line of its own, even beside another thread's print
                sys.stdout.flush()


_current: Optional[Heartbeat] = None


def heartbeat() -> Optional[Heartbeat]:
    """The heartbeat of the job under way in this process; None outside one (or on a DDP rank other than 0)."""
    return _current


def say(phase: str) -> None:
    """What is under way now, for the heartbeat's next line (nothing outside a job)."""
    if _current is not None:
        _current.say(phase)


class _Tee:
    """A stream that also writes into the run's log; all else (isatty, fileno, encoding) is the stream's own."""

    def __init__(self, stream: TextIO, name: str, log: RunLog, beat: Heartbeat) -> None:
        self._stream, self._name, self._log, self._beat = stream, name, log, beat

    def write(self, text: str) -> int:
        self._log.write(self._name, text)
        self._beat.heard()
        return self._stream.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def traceback_of(ex: BaseException) -> Optional[str]:
    """What the terminal shows of an exception that ends a job, by default: its traceback (nothing for an exit,
    whose message was printed already). The entry points pass their own (cli.last_words: one `error:` line)."""
    if isinstance(ex, SystemExit):
        return None
    return "".join(traceback.format_exception(type(ex), ex, ex.__traceback__)).rstrip("\n")


def _handlers_on(streams: tuple[TextIO, ...]) -> list[logging.StreamHandler]:
    """The logging handlers (Lightning's own) that write to these streams themselves, bound when they were made.
    The root logger's are left alone: Hydra writes its records to the log file already."""
    loggers = [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    return [h for lg in loggers for h in lg.handlers
            if type(h) is logging.StreamHandler and any(h.stream is s for s in streams)]


@contextlib.contextmanager
def kept(path: Path, since: float, write: bool = True,
         words: Callable[[BaseException], Optional[str]] = traceback_of) -> Iterator[Optional[RunLog]]:
    """For the duration of a job: stdout and stderr also into `path`, and the heartbeat (its silences counted from
    `since`, the job's start). write=False (a DDP rank other than 0): neither. words: what the log gets of an
    exception that ends the job (what the terminal shows of it)."""
    global _current
    if not write:
        yield None
        return
    log, beat, before = RunLog(path), Heartbeat(since), _current
    streams = (sys.stdout, sys.stderr)
    tees = (_Tee(sys.stdout, "stdout", log, beat), _Tee(sys.stderr, "stderr", log, beat))
    handlers = [(h, h.stream) for h in _handlers_on(streams)]
    for h, stream in handlers:
        h.setStream(tees[streams.index(stream)])
    sys.stdout, sys.stderr = tees
    _current, stop = beat, threading.Event()
    thread = threading.Thread(target=beat.beat, args=(stop,), name="gptlab-heartbeat", daemon=True)
    thread.start()
    try:
        yield log
    except BaseException as ex:
        last = words(ex)
        if last is not None:
            log.write("stderr", last + "\n")
        raise
    finally:
        stop.set()
        thread.join()
        sys.stdout, sys.stderr = streams
        for h, stream in handlers:
            h.setStream(stream)
        _current = before
        log.close()
