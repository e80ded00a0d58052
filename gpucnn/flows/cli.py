"""Prefect for the command lines: started only when a flow runs, quiet where gpucnn speaks.

Whatever can be answered without a flow is answered before Prefect starts (gpucnn.cli: bad
values, a run folder in use or holding another config, a run that has finished). Then
:func:`start_prefect` launches Prefect's local API server (unless PREFECT_API_URL or the
active Prefect profile names a server) as a child of this process that cannot outlive it
(gpucnn.flows.local_api); the command verifies its data meanwhile, and :func:`prefect_ready`
waits for the server before the flow runs.

Logs: gpucnn's INFO lines (epochs, the device, early stopping, learning-rate changes,
resuming) go to Prefect's run logs and console, and a training run's to its folder's log.txt;
see gpucnn.logs and gpucnn.flows.reporting. An expected failure is said once, in one line,
by the command (gpucnn.cli.run.run_cli): Prefect's own records of it stay off the console,
as do its records of an interrupt (the run's logs and log.txt keep them).
"""

from __future__ import annotations

import logging
import os
import re
import sys

from gpucnn.cli import run
from gpucnn.flows import local_api
from gpucnn.logs import show_info

HEARTBEAT_S = "30"  # seconds between a flow run's heartbeats (Prefect's least)


def start_prefect() -> None:
    """Telemetry off, flow-run heartbeats every HEARTBEAT_S seconds (unless
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY says otherwise: an automation on the server marks a run
    whose heartbeats stop Crashed, see flows/automations.yaml), gpucnn's INFO lines in
    Prefect's logs (the ``gpucnn`` logger is attached to them, for processes started from
    here such as Dask workers too, and set to INFO; in this process a flow's reporting
    session sends them instead), and an API: the server
    PREFECT_API_URL names, or Prefect's local server, launched now (gpucnn.flows.local_api:
    its start overlaps with what the command does next; :func:`prefect_ready` waits for it).
    The local server gets 90 s to start (Prefect's 20 s is short on a busy 2-core machine).
    Imports Prefect, saying so first in one line (its start takes seconds, more with a local
    server to launch)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if "PREFECT_RUNNER_HEARTBEAT_FREQUENCY" not in os.environ:  # Prefect's older name
        os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", HEARTBEAT_S)
    extra = [n for n in os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "").split(",") if n]
    if "gpucnn" not in extra:
        os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join([*extra, "gpucnn"])
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # lines logged before the flow starts (the data verified meanwhile) have no flow run to go to
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    show_info()
    url = os.environ.get("PREFECT_API_URL")
    print(
        f"starting Prefect (its API: {url})"
        if url
        else "starting Prefect and its local API server, which takes a while (PREFECT_API_URL "
        "naming a running server skips it)",
        file=sys.stderr,
        flush=True,
    )
    run.on_exit_now(local_api.terminate)  # an interrupted command stops the server as it leaves
    local_api.start_local_api()
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # Prefect's console now: the lines before the flow look like its own
    quiet_expected_tracebacks()


def prefect_ready() -> None:
    """Wait until the API :func:`start_prefect` chose answers (the local server's start)."""
    local_api.wait_for_local_api()
    quiet_expected_tracebacks()  # on any console handler set up since


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
            return not isinstance(exc, run.expected_errors())
        if record.name.startswith("prefect") and record.levelno >= logging.INFO:
            match = self._about.search(record.getMessage())
            if match and match.group(1) in run.expected_error_names():
                return False
        return True


class _QuietAfterInterrupt(logging.Filter):
    """Keeps the console to gpucnn's one line once a run is interrupted: Prefect's records of
    the interrupt ("Crash detected! Execution was aborted by an interrupt signal", the task's
    and flow's crashed states) and anything logged after the signal are dropped from the
    console; the run's logs (Prefect's API, log.txt) still take them."""

    _about = ("aborted by an interrupt signal", "aborted by a termination signal")

    def filter(self, record: logging.LogRecord) -> bool:
        if run.interrupted_by() is not None:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and run.interrupt_status(exc) is not None:
            return False
        return not any(about in record.getMessage() for about in self._about)


def api_gone_at_the_end(exc: Exception, folder) -> dict:
    """The result of a run whose flow raised ``exc`` because Prefect's API stopped answering
    (beyond the flow's bounded wait: its final state could not be recorded) after the run
    had finished; anything else is raised again. One line says what Prefect was not told."""
    import httpx

    result = folder.finished_result()
    if result is None or not isinstance(exc, httpx.TransportError):
        raise exc
    result["already_finished"] = False
    print(
        f"warning: Prefect's API did not answer at the flow run's end ({type(exc).__name__}: "
        f"{exc}); its final state was not recorded, but the run is complete: its results are "
        f"in {result['run_dir']} and its lines in {folder.path / 'log.txt'}",
        file=sys.stderr,
    )
    return result


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
