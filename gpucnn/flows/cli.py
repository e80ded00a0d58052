"""Command-line plumbing shared by the flow entry points; imports no Prefect until a flow runs.

Prefect only when it is needed. Whatever can be answered without a flow is answered before
Prefect starts: bad values, a run folder in use or holding another config, a run that has
finished. Then :func:`start_prefect` launches Prefect's local API server (unless
PREFECT_API_URL or the active Prefect profile names a server) as a child of this process that
cannot outlive it (gpucnn.flows.local_api); the command verifies its data meanwhile, and
:func:`prefect_ready` waits for the server before the flow runs.

Exit status (:data:`EXIT_STATUS`, in every command's --help): 0 done; 1 a failure at run
time (data that cannot be had, a checkpoint or run folder that cannot be used, no GPU), said in
one line; 2 a usage error or a bad value (argparse's, and a value a config field refuses:
:func:`bad_values`); 130 and 143 interrupted by SIGINT and SIGTERM.

Signals. SIGINT (Ctrl-C, to this process or its whole process group) and SIGTERM end a run
alike: Prefect marks the flow run crashed (its crash records go to the run's logs and
log.txt, not to the console), one line says "interrupted; re-run the same command to resume
from the last checkpoint", and the exit status is 128 + the signal: 130 for SIGINT, 143 for
SIGTERM. The process is gone within EXIT_DEADLINE_S (3.5 s) of the signal whatever is still
running (a sweep's trial threads, a log flush); a second signal ends it at once.

Logs: gpucnn's INFO lines (epochs, the device, early stopping, learning-rate changes,
resuming) go to Prefect's run logs and console, and a training run's to its folder's log.txt;
see gpucnn.logs and gpucnn.flows.reporting. Standard output and error may go away mid-run (a
pipe whose reader ended, a closed descriptor): the run goes on (gpucnn.logs.GuardedStream).
Ways out of a refusal name the command line's flags (``--overwrite``, ``--run-name``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from gpucnn.flows import local_api
from gpucnn.logs import guard_standard_streams, show_info
from gpucnn.train.config import PRESETS, TrainConfig, field_types
from gpucnn.train.runs import ways_out

GROUPS = {"run": "run", "where": "where the data comes from"}

EXIT_STATUS = (
    "exit status: 0 done, 1 a failure at run time (said in one line), 2 a usage error or a bad "
    "value, 130 and 143 interrupted (SIGINT: Ctrl-C, SIGTERM)"
)


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
        "model, batch 256, one cycle of 2 epochs: MNIST to 99%% test accuracy; cifar: CIFAR-10 "
        "in colour, the narrow ResNet, one cycle of 10 epochs, flips and crops)",
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


def checkpoint_config(
    saved: dict[str, Any], data_dir: str | None = None, mirrors: list[str] | None = None
) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with (``saved``: its config), its data found
    in ``data_dir`` and ``mirrors`` when they are given (an evaluation elsewhere)."""
    overrides = {"data_dir": data_dir, "mirrors": mirrors}
    return TrainConfig.from_dict({**saved, **{k: v for k, v in overrides.items() if v is not None}})


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a stable order."""
    keys = sorted(grid)
    return [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(grid[k] for k in keys))
    ]


def start_prefect() -> None:
    """Telemetry off, gpucnn's INFO lines in Prefect's logs (the ``gpucnn`` logger is attached
    to them, for processes started from here such as Dask workers too, and set to INFO; in
    this process a flow's reporting session sends them instead), and an API: the server
    PREFECT_API_URL names, or Prefect's local server, launched now (gpucnn.flows.local_api:
    its start overlaps with what the command does next; :func:`prefect_ready` waits for it).
    The local server gets 90 s to start (Prefect's 20 s is short on a busy 2-core machine).
    Imports Prefect."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    extra = [n for n in os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "").split(",") if n]
    if "gpucnn" not in extra:
        os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join([*extra, "gpucnn"])
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # lines logged before the flow starts (the data verified meanwhile) have no flow run to go to
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    show_info()
    local_api.start_local_api()
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # Prefect's console now: the lines before the flow look like its own
    quiet_expected_tracebacks()


def prefect_ready() -> None:
    """Wait until the API :func:`start_prefect` chose answers (the local server's start)."""
    local_api.wait_for_local_api()
    quiet_expected_tracebacks()  # on any console handler set up since


def verify_data(configs: list[TrainConfig]) -> None:
    """Fetch what is missing and verify the datasets ``configs`` name, each once (a command
    does it while Prefect's local API starts; the flow's own check then finds them whole)."""
    from gpucnn import data

    seen = set()
    for c in configs:
        key = (c.dataset, c.data_dir, tuple(c.mirrors or ()), tuple(c.data_options().items()))
        if key not in seen:
            seen.add(key)
            data.download(c.dataset, c.data_dir, c.mirrors, **c.data_options())


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


class _QuietAfterInterrupt(logging.Filter):
    """Keeps the console to gpucnn's one line once a run is interrupted: Prefect's records of
    the interrupt ("Crash detected! Execution was aborted by an interrupt signal", the task's
    and flow's crashed states) and anything logged after the signal are dropped from the
    console; the run's logs (Prefect's API, log.txt) still take them."""

    _about = ("aborted by an interrupt signal", "aborted by a termination signal")

    def filter(self, record: logging.LogRecord) -> bool:
        if _received is not None:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _interrupt_code(exc) is not None:
            return False
        return not any(about in record.getMessage() for about in self._about)


def quiet_expected_tracebacks() -> None:
    """Attach the filters to Prefect's console handlers (call after importing prefect)."""
    for name in ("prefect", ""):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _NoTracebackForExpected) for f in handler.filters):
                handler.addFilter(_NoTracebackForExpected())
            console = isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            )
            if console and not any(isinstance(f, _QuietAfterInterrupt) for f in handler.filters):
                handler.addFilter(_QuietAfterInterrupt())


INTERRUPTED = "interrupted; re-run the same command to resume from the last checkpoint"
EXIT_DEADLINE_S = 3.5  # after SIGINT or SIGTERM the process is gone within this

_received: int | None = None  # the signal that interrupted run_cli's body
_said = threading.Event()  # the line was printed
_saying = threading.RLock()  # reentrant: a second signal may arrive while the line is printed


_line = INTERRUPTED  # what the interrupted command says (run_cli's ``interrupted``)


def _say_interrupted() -> None:
    with _saying:
        if not _said.is_set():
            _said.set()
            print(_line, file=sys.stderr, flush=True)


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
        code = _interrupt_code(exc)
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
