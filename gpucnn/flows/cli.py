"""Command-line plumbing shared by the flow entry points; imports no Prefect until a flow runs.

Prefect's API. Unless PREFECT_API_URL (or the active Prefect profile) names a server,
:func:`prepare_prefect_env` starts Prefect's local API server as a child of this process that
cannot outlive it (gpucnn.flows.local_api). With PREFECT_API_URL set, nothing is started.

Signals. SIGINT (Ctrl-C, to this process or its whole process group) and SIGTERM end a run
alike: Prefect marks the flow run crashed, one line says "interrupted; re-run the same
command to resume from the last checkpoint", and the exit status is 128 + the signal: 130
for SIGINT, 143 for SIGTERM. The process is gone within EXIT_DEADLINE_S (3.5 s) of the signal
whatever is still running (a sweep's trial threads, a log flush); a second signal ends it
at once.

Logs: gpucnn's INFO lines (epochs, the device, early stopping, learning-rate changes,
resuming) go to Prefect's run logs and console, and a training run's to its folder's log.txt;
see gpucnn.logs and gpucnn.flows.reporting. Standard output and error may go away mid-run (a
pipe whose reader ended, a closed descriptor): the run goes on (gpucnn.logs.GuardedStream).
Ways out of a refusal name the command line's flags (``--overwrite``, ``--run-name``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from gpucnn.flows import local_api
from gpucnn.logs import guard_standard_streams, show_info
from gpucnn.train.config import PRESETS, TrainConfig, field_types
from gpucnn.train.runs import ways_out

GROUPS = {"run": "run", "where": "where the data comes from"}


def parse_value(name: str, text: str) -> Any:
    """Text from a command line (an option, a sweep grid) as the value of config field
    ``name``: its field's type, with bools as yes/no words."""
    kind, _ = field_types()[name]
    if kind is bool:
        words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
        if text.strip().lower() not in words:
            raise ValueError(f"{name}: expected true or false, got {text!r}")
        return words[text.strip().lower()]
    try:
        return kind(text.strip())
    except ValueError:
        raise ValueError(f"{name}: expected {kind.__name__}, got {text!r}") from None


def add_config_options(ap: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field: its type, default, choices and help come from the
    field itself (gpucnn.train.config), so the command line and the config cannot drift."""
    groups = {key: ap.add_argument_group(title) for key, title in GROUPS.items()}
    types = field_types()
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        flag = "--" + meta.get("flag", f.name).replace("_", "-")
        kind, is_list = types[f.name]
        default = f.default
        shown = "" if default is None else " (default: %(default)s)"
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": meta["help"] + shown}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif is_list:
            kwargs.update(action="append", type=kind, metavar=meta.get("metavar"))
        else:
            kwargs.update(type=kind, choices=meta.get("choices"), metavar=meta.get("metavar"))
        groups[meta.get("group", "run")].add_argument(flag, **kwargs)


def add_preset_option(ap: argparse.ArgumentParser) -> None:
    """``--preset NAME``: a named recipe (gpucnn.train.config.PRESETS) whose values become the
    options' defaults; options given on the command line win (see :func:`parse_args`)."""
    ap.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="start from a named recipe; options given explicitly override it (fast: the seed "
        "model, batch 256, one cycle of 2 epochs: MNIST to 99%% test accuracy)",
    )


def parse_args(ap: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with ``ap``; a ``--preset``'s values are the defaults, so options given
    explicitly win (two passes: the preset first, then everything)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default=None)
    known, _ = pre.parse_known_args(argv)
    if known.preset:
        ap.set_defaults(**PRESETS[known.preset])
    return ap.parse_args(argv)


def config_from(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed options describe (validated: a bad value raises here,
    before anything starts)."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a stable order."""
    keys = sorted(grid)
    return [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(grid[k] for k in keys))
    ]


def prepare_prefect_env() -> None:
    """Telemetry off, gpucnn's INFO lines in Prefect's logs (the ``gpucnn`` logger is attached
    to them, for processes started from here such as Dask workers too, and set to INFO; in
    this process a flow's reporting session sends them instead), and an API: the server
    PREFECT_API_URL names, or Prefect's local server started by :func:`start_local_api`. The
    local server gets 90 s to start (Prefect's 20 s is short on a busy 2-core machine)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    extra = [n for n in os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "").split(",") if n]
    if "gpucnn" not in extra:
        os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join([*extra, "gpucnn"])
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    show_info()
    local_api.start_local_api()


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


def _expected_names() -> set[str]:
    """Class names of the expected errors and of every subclass defined so far."""
    names, todo = set(), list(expected_errors())
    while todo:
        cls = todo.pop()
        if cls.__name__ not in names:
            names.add(cls.__name__)
            todo.extend(cls.__subclasses__())
    return names


class _NoTracebackForExpected(logging.Filter):
    """Keeps an expected failure off the console until the command's own last line.

    Prefect logs a failed task or flow several times (the task's failure, its final state,
    the flow's, each with the exception's text, some with a traceback); the command then
    prints the error once, in one line. So Prefect's records about an expected error are
    dropped from the console (they still reach Prefect's API, where the run's logs keep
    them); records about any other error keep everything, traceback included."""

    _about = re.compile(r"\b(\w+(?:Error|Exception))\b[(:]")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            return not isinstance(exc, expected_errors())
        if record.name.startswith("prefect") and record.levelno >= logging.INFO:
            match = self._about.search(record.getMessage())
            if match and match.group(1) in _expected_names():
                return False
        return True


def quiet_expected_tracebacks() -> None:
    """Attach the filter to Prefect's console handlers (call after importing prefect)."""
    for name in ("prefect", ""):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_NoTracebackForExpected())


INTERRUPTED = "interrupted; re-run the same command to resume from the last checkpoint"
EXIT_DEADLINE_S = 3.5  # after SIGINT or SIGTERM the process is gone within this

_received: int | None = None  # the signal that interrupted run_cli's body
_said = threading.Event()  # the line was printed
_saying = threading.RLock()  # reentrant: a second signal may arrive while the line is printed


def _say_interrupted() -> None:
    with _saying:
        if not _said.is_set():
            _said.set()
            print(INTERRUPTED, file=sys.stderr, flush=True)


def _exit_now() -> None:
    """Leave at once: the one line, the local server told to stop, exit status 128 + signal."""
    _say_interrupted()
    local_api.terminate()
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


def _interrupt_code(exc: BaseException) -> int | None:
    """128 + the signal when ``exc`` ends an interrupted run (whatever Prefect turned the
    interrupt into), else None."""
    if _received is not None:
        return 128 + _received
    if isinstance(exc, KeyboardInterrupt):
        return 128 + signal.SIGINT
    if any(c.__name__ == "TerminationSignal" for c in type(exc).__mro__):  # Prefect's SIGTERM
        return 128 + getattr(exc, "signal", signal.SIGTERM)
    return None


def run_cli(body: Callable[[], Any]) -> int:
    """Run ``body``; expected failures print one line and exit 1, never a traceback.

    SIGINT and SIGTERM interrupt it alike: one line (:data:`INTERRUPTED`), exit status 130
    for SIGINT and 143 for SIGTERM (128 + the signal, as a shell reports a process a signal
    ended), the process gone within :data:`EXIT_DEADLINE_S` of the signal; a second signal
    ends it at once."""
    global _received
    _received = None
    _said.clear()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    guard_standard_streams()  # before Prefect's console handler takes sys.stderr
    try:
        with ways_out("command line"):
            body()
    except BaseException as exc:
        code = _interrupt_code(exc)
        if code is not None:
            _say_interrupted()
            return code
        if not isinstance(exc, expected_errors()):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: {type(exc).__name__}: {reason}", file=sys.stderr)
        details = str(exc).splitlines()[1:]
        for line in details[:6]:
            print(f"  {line.strip()}", file=sys.stderr)
        return 1
    finally:
        if _received is None:  # after a signal, a second one must still end the process
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0
