"""How a gpucnn command runs: its exit status, its one-line failures and its signals.

Exit status (:data:`EXIT_STATUS`, in every command's --help): 0 done; 1 a failure at run
time (data that cannot be had, a checkpoint or run folder that cannot be used, no GPU), said in
one line; 2 a usage error or a bad value (argparse's, and a value a config field refuses:
:func:`bad_values`); 130 and 143 interrupted by SIGINT and SIGTERM.

Signals. SIGINT (Ctrl-C, to this process or its whole process group) and SIGTERM end a run
alike: one line says "interrupted; re-run the same command to resume from the last
checkpoint" (a training run's; other commands say "interrupted"), and the exit status is
128 + the signal: 130 for SIGINT, 143 for SIGTERM. The process is gone within
EXIT_DEADLINE_S (3.5 s) of the signal whatever is still running (a sweep's trial threads, a
log flush); a second signal ends it at once. What must stop with it (Prefect's local API
server, which gpucnn.flows starts) registers with :func:`on_exit_now`.

Standard output and error may go away mid-run (a pipe whose reader ended, a closed
descriptor): the run goes on (gpucnn.logs.GuardedStream). Ways out of a refusal name the
command line's flags (``--overwrite``, ``--run-name``).

Imports nothing beyond the standard library and gpucnn's core: every command's --help is
instant.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from gpucnn.logs import guard_standard_streams
from gpucnn.train.runs import ways_out

EXIT_STATUS = (
    "exit status: 0 done, 1 a failure at run time (said in one line), 2 a usage error or a bad "
    "value, 130 and 143 interrupted (SIGINT: Ctrl-C, SIGTERM)"
)

INTERRUPTED = "interrupted; re-run the same command to resume from the last checkpoint"
CHECKPOINT_HELP = "a .npz checkpoint written by a training run"


def command_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A command's parser: ``doc`` (its module's docstring) as the description, laid out as
    written, and the exit statuses after the options."""
    return argparse.ArgumentParser(
        prog=prog,
        description=doc,
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


EXIT_DEADLINE_S = 3.5  # after SIGINT or SIGTERM the process is gone within this


class _BadValue(Exception):
    """A value of the command line broke a rule (exit status 2); carries the ValueError."""


@contextlib.contextmanager
def bad_values() -> Iterator[None]:
    """A ValueError raised in this block is a bad value of the command line: run_cli reports
    it in one line, as any failure, but with exit status 2, as argparse's usage errors."""
    try:
        yield
    except ValueError as exc:
        raise _BadValue(exc) from exc


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures a user can act on: reported in one line, without a traceback."""
    from gpucnn.backend import BackendUnavailableError
    from gpucnn.data import DataError
    from gpucnn.train.errors import CheckpointError, TrainingError

    return (
        DataError,
        TrainingError,
        CheckpointError,
        BackendUnavailableError,
        ValueError,
        KeyError,
        OSError,
    )


def expected_error_names() -> set[str]:
    """Class names of the expected errors and of every subclass defined so far."""
    names, todo = set(), list(expected_errors())
    while todo:
        cls = todo.pop()
        if cls.__name__ not in names:
            names.add(cls.__name__)
            todo.extend(cls.__subclasses__())
    return names


_received: int | None = None  # the signal that interrupted run_cli's body
_said = threading.Event()  # the line was printed
_saying = threading.RLock()  # reentrant: a second signal may arrive while the line is printed
_line = INTERRUPTED  # what the interrupted command says (run_cli's ``interrupted``)
_exit_hooks: list[Callable[[], None]] = []  # what must stop with the process (on_exit_now)


def on_exit_now(hook: Callable[[], None]) -> None:
    """Call ``hook`` (quick, no waiting) when an interrupted command leaves at once: its
    deadline passed or a second signal came. Registered once however often it is asked."""
    if hook not in _exit_hooks:
        _exit_hooks.append(hook)


def interrupted_by() -> int | None:
    """The signal that interrupted the running command, or None."""
    return _received


def _say_interrupted() -> None:
    with _saying:
        if not _said.is_set():
            _said.set()
            print(_line, file=sys.stderr, flush=True)


def _exit_now() -> None:
    """Leave at once: the one line, the hooks (the local server told to stop), exit status
    128 + signal."""
    _say_interrupted()
    for hook in _exit_hooks:
        hook()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(128 + (_received or signal.SIGINT))


def _exit_by_deadline() -> None:
    time.sleep(EXIT_DEADLINE_S)
    _exit_now()


def _on_signal(signum: int, frame: Any) -> None:
    global _received
    if _received is not None:  # a second signal: no more waiting
        _exit_now()
    _received = signum
    threading.Thread(target=_exit_by_deadline, name="gpucnn-exit-deadline", daemon=True).start()
    raise KeyboardInterrupt


def interrupt_status(exc: BaseException) -> int | None:
    """128 + the signal when ``exc`` ends an interrupted run (whatever Prefect turned the
    interrupt into), else None."""
    if _received is not None:
        return 128 + _received
    if isinstance(exc, KeyboardInterrupt):
        return 128 + signal.SIGINT
    if any(c.__name__ == "TerminationSignal" for c in type(exc).__mro__):  # Prefect's SIGTERM
        return 128 + getattr(exc, "signal", signal.SIGTERM)
    return None


def run_cli(body: Callable[[], int | None], interrupted: str = INTERRUPTED) -> int:
    """Run ``body``; returns its exit status (``body``'s int, else 0).

    Expected failures print one line and exit 1, never a traceback; a bad value (raised
    under :func:`bad_values`) prints one line and exits 2. SIGINT and SIGTERM interrupt it
    alike: one line (``interrupted``; :data:`INTERRUPTED` for a training run), exit status
    130 for SIGINT and 143 for SIGTERM (128 + the signal, as a shell reports a process a
    signal ended), the process gone within :data:`EXIT_DEADLINE_S` of the signal; a second
    signal ends it at once."""
    global _received, _line
    _received = None
    _line = interrupted
    _said.clear()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    guard_standard_streams()  # before Prefect's console handler takes sys.stderr
    try:
        with ways_out("command line"):
            code = body()
    except BaseException as exc:
        code = interrupt_status(exc)
        if code is not None:
            _say_interrupted()
            return code
        status = 2 if isinstance(exc, _BadValue) else 1
        exc = exc.args[0] if isinstance(exc, _BadValue) else exc
        if not isinstance(exc, expected_errors()):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: {type(exc).__name__}: {reason}", file=sys.stderr)
        details = str(exc).splitlines()[1:]
        for line in details[:6]:
            print(f"  {line.strip()}", file=sys.stderr)
        return status
    finally:
        if _received is None:  # after a signal, a second one must still end the process
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return code if isinstance(code, int) else 0
