"""Where gpucnn's log lines go, and why a closed console never stops a run.

gpucnn logs on the ``gpucnn`` logger and its children (``gpucnn.train``: epoch lines, early
stopping, learning-rate changes, resuming; ``gpucnn.data``: downloads; ``gpucnn`` itself: the
device ``"auto"`` picked). Each line is written once, by whichever of these handles it:

- your own logging set-up (``logging.basicConfig(...)``, handlers on ``gpucnn`` or the root
  logger): gpucnn never adds a handler beside one of yours;
- Prefect, under a flow: the flow run's logs (gpucnn.flows.reporting sends them), and the root
  logger's console handler prints them;
- otherwise, once progress is asked for (``Trainer(..., progress=True)``, the default), a
  plain ``message``-only handler on stderr, added once per process and silent as soon as
  the root logger has a handler of its own (so configuring logging later never doubles a line).

:func:`show_info` sets ``gpucnn`` to INFO when nobody set its level (Python's default,
WARNING, would drop the epoch lines); a level you set is left alone.

A run folder's ``log.txt`` (:func:`run_log`) keeps every line of the run, whatever happens to
the console. A console can go away under a running process: the program reading its pipe
ends (a Prefect worker killed, ``| head``), or its descriptor is closed. Writing to it then
fails (EPIPE, EBADF, EIO), and a failed write must never be what ends training:
:func:`guard_standard_streams` makes such a write succeed silently, points the descriptor at
os.devnull (so later writes, a C library's and Python's last flush at exit included, succeed
too) and logs one warning saying where the lines go on (log.txt, Prefect's run logs).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOGGER = "gpucnn"

# what a write to a console that went away fails with: its reader ended, its descriptor was
# closed, its terminal hung up
GONE = {errno.EPIPE, errno.EBADF, errno.EIO, errno.ENXIO}


def is_gone(exc: BaseException) -> bool:
    """Whether ``exc`` (raised by a write or flush) says the stream itself went away."""
    if isinstance(exc, OSError):
        return exc.errno in GONE
    return isinstance(exc, ValueError) and "closed file" in str(exc)


class _StderrFallback(logging.StreamHandler):
    """Prints gpucnn's lines on the current ``sys.stderr`` while nothing else would: it stays
    silent when the root logger (the user's set-up, Prefect's console, pytest's capture) or
    the ``gpucnn`` logger has another handler (a run's log file aside)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):  # follow sys.stderr when it is replaced (as logging.lastResort does)
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        others = [
            h
            for h in logging.getLogger(LOGGER).handlers
            if h is not self and not isinstance(h, _RunLogFile)
        ]
        if others or logging.getLogger().handlers:
            return
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if not is_gone(sys.exc_info()[1]):  # a gone stderr: nothing to say, and nowhere
            super().handleError(record)


def show_info() -> None:
    """Let gpucnn's INFO lines through: the ``gpucnn`` logger at INFO unless its level was set."""
    logger = logging.getLogger(LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def ensure_sink() -> None:
    """Make gpucnn's INFO lines visible somewhere: :func:`show_info`, and when no handler on
    the way from ``gpucnn`` to the root would take them, a stderr handler (once)."""
    show_info()
    logger = logging.getLogger(LOGGER)
    if any(isinstance(h, _StderrFallback) for h in logger.handlers):
        return
    if not any(not isinstance(h, _RunLogFile) for h in logger.handlers) and not (
        logger.propagate and logging.getLogger().hasHandlers()
    ):
        logger.addHandler(_StderrFallback())


# -- a run's log file --------------------------------------------------------------------------
class _RunLogFile(logging.FileHandler):
    """A run folder's log.txt: every line, with its time, level and who said it (a logger's
    name, or the flow or task run a Prefect run logger speaks for)."""


class _RunLogFormat(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(who)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "task_run_name", None):
            record.who = f"task run {record.task_run_name!r}"
        elif getattr(record, "flow_run_name", None):
            record.who = f"flow run {record.flow_run_name!r}"
        else:
            record.who = record.name
        return super().format(record)


_open_logs: dict[Path, _RunLogFile] = {}  # the run logs open now (one per running run)
_open_guard = threading.Lock()


@contextlib.contextmanager
def run_log(path: str | os.PathLike, loggers: tuple[str, ...] = (LOGGER,)) -> Iterator[Path]:
    """Append every INFO (and higher) line of ``loggers`` to ``path`` while the block runs.

    The file is the run's own record: it keeps the lines when the console goes away
    (:func:`guard_standard_streams` says so in it) and across resumed runs (appended to).

    Args:
        path: the file (its folder must exist); made at the first line.
        loggers: the loggers whose lines it takes (gpucnn's by default; a flow adds Prefect's
            flow- and task-run loggers).

    Nested on the same file (a command line keeps it open around the flow it calls, so that
    records made after the flow's body, such as Prefect's crash record, reach it too), the
    inner block shares the outer's handler: each line is written once.
    """
    path = Path(os.path.abspath(path))
    with _open_guard:
        outer = _open_logs.get(path)
    if outer is not None:  # the file is open already (a command line around its flow): share it
        added = [n for n in loggers if outer not in logging.getLogger(n).handlers]
        for name in added:
            logging.getLogger(name).addHandler(outer)
        try:
            yield path
        finally:
            for name in added:
                logging.getLogger(name).removeHandler(outer)
        return
    handler = _RunLogFile(path, mode="a", encoding="utf-8", delay=True)
    handler.setFormatter(_RunLogFormat())
    handler.setLevel(logging.INFO)
    show_info()
    for name in loggers:
        logging.getLogger(name).addHandler(handler)
    with _open_guard:
        _open_logs[path] = handler
    try:
        yield path
    finally:
        with _open_guard:
            _open_logs.pop(path, None)
        for name in loggers:
            logging.getLogger(name).removeHandler(handler)
        handler.close()


# -- standard streams that may go away ---------------------------------------------------------
class GuardedStream:
    """A text stream whose writes never fail because the stream went away (:func:`is_gone`).

    The first such failure points the stream's descriptor at os.devnull (unless it was
    closed: its number may be another file's by then) and logs one warning; from then on
    writes are dropped. Other errors pass through. Everything else
    (``isatty``, ``fileno``, ``encoding``, ...) is the wrapped stream's.
    """

    def __init__(self, stream: Any, name: str) -> None:
        self._stream, self._name = stream, name
        self._gone = False
        self._lock = threading.Lock()

    @property
    def wrapped(self) -> Any:
        return self._stream

    @property
    def gone(self) -> bool:
        return self._gone

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except (OSError, ValueError) as exc:
                if not is_gone(exc):
                    raise
                self._went(exc)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except (OSError, ValueError) as exc:
                if not is_gone(exc):
                    raise
                self._went(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _went(self, exc: BaseException) -> None:
        with self._lock:
            if self._gone:
                return
            self._gone = True
            if getattr(exc, "errno", None) != errno.EBADF:  # a closed number may be reused
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    fd = self._stream.fileno()
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, fd)  # later writes (C code's, the last flush) succeed
                    os.close(devnull)
        # said from a thread of its own (with this one's context: a flow run's logs take it),
        # not from inside the failed write, which may hold a handler's or a console's lock
        context = contextvars.copy_context()
        threading.Thread(
            target=context.run, args=(self._say_gone, exc), name="gpucnn-stream-gone", daemon=True
        ).start()

    def _say_gone(self, exc: BaseException) -> None:
        with _open_guard:
            files = [str(p) for p in _open_logs]
        where = f"its lines go on in {', '.join(files)}" if files else "its lines are dropped"
        reason = os.strerror(exc.errno) if getattr(exc, "errno", None) else str(exc)
        logging.getLogger(LOGGER).warning(
            "%s went away (%s: %s); the run goes on and %s",
            self._name,
            type(exc).__name__,
            reason,
            where,
        )


def _handlers() -> Iterator[logging.Handler]:
    loggers = [logging.getLogger()]
    loggers += [
        v
        for v in list(logging.Logger.manager.loggerDict.values())  # another thread may add
        if isinstance(v, logging.Logger)
    ]
    seen: set[int] = set()
    for logger in loggers:
        for handler in logger.handlers:
            if id(handler) not in seen:
                seen.add(id(handler))
                yield handler


def guard_standard_streams() -> None:
    """Make this process's standard output and error :class:`GuardedStream` s, for
    ``print`` and for every logging handler already writing to them (Python's StreamHandler,
    and a rich Console's file as Prefect's console handler has). Safe to call again (what is
    guarded stays as it is); streams another program put in place of the interpreter's own
    (pytest's capture, a notebook's) are left alone."""
    for name in ("stdout", "stderr"):
        raw = getattr(sys, f"__{name}__")
        if raw is None:  # started without one: nothing to guard
            continue
        current = getattr(sys, name)
        if isinstance(current, GuardedStream) and current.wrapped is raw:
            guarded = current
        elif current is raw:
            guarded = GuardedStream(raw, name)
            setattr(sys, name, guarded)
        else:
            continue
        for handler in _handlers():
            if isinstance(handler, logging.StreamHandler) and handler.stream is raw:
                with handler.lock:  # not setStream: its flush of a broken stream would raise
                    handler.stream = guarded
            console = getattr(handler, "console", None)  # rich.console.Console
            if console is not None and getattr(console, "_file", None) is raw:
                console.file = guarded
