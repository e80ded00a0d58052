"""Prefect's local API server, started by the command lines as a child that cannot outlive them.

Unless PREFECT_API_URL (or the active Prefect profile) names a server, :func:`start_local_api`
starts Prefect's local API server (the uvicorn app and SQLite database of Prefect's ephemeral
mode) as a child of this process: it runs in a session of its own, so a Ctrl-C in the terminal
reaches only this process, which stops it on the way out (after Prefect has sent its last
logs); and it is bound to die with this process (Linux: prctl PR_SET_PDEATHSIG; elsewhere it
polls its parent), so even a SIGKILL leaves nothing running. PREFECT_API_URL then points at
it, for Prefect here and for any process started from here (Dask workers included).

Its start overlaps with the command's own work: :func:`start_local_api` launches the server
(before importing Prefect here, when this process has not yet: the server's seconds-long
imports and database set-up run on another core while this one imports Prefect and verifies
the data) and :func:`wait_for_local_api` waits for it to answer. When Prefect's settings
then name a server after all (a profile, prefect.toml), the launched one is stopped unused.
"""

from __future__ import annotations

import atexit
import http.client
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time


class LocalAPIError(OSError):
    """Prefect's local API server did not start (reported in one line, like an OSError)."""


# Run by the server's interpreter before uvicorn: it dies with the process that started it.
_SERVER_CHILD = r"""
import os, signal, sys, threading, time
parent = int(sys.argv[1])
try:  # Linux: the kernel sends SIGTERM when the parent dies, even by SIGKILL
    import ctypes
    if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM) != 0:  # PR_SET_PDEATHSIG
        raise OSError
except (AttributeError, OSError):  # elsewhere: notice the parent's death by polling
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True).start()
if os.getppid() != parent:  # the parent died before prctl took effect
    sys.exit(0)
import runpy
sys.argv = ["uvicorn", *sys.argv[2:]]
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""


class _LocalAPI:
    """Prefect's local API server (the app and SQLite database of Prefect's ephemeral mode) as
    a child of this process, in a session of its own and bound to die with it."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.env: dict[str, str] = {}
        self.url: str | None = None

    def spawn(self, env: dict[str, str]) -> None:
        """Launch the server on a free port; :meth:`wait` waits for it to answer."""
        self.env = env
        self.port = _free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _SERVER_CHILD,
                str(os.getpid()),
                "--app-dir",
                _prefect_parent(),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # never holds the command's stdout (a pipe) open
            start_new_session=True,  # a Ctrl-C in the terminal reaches this process only
        )

    def wait(self, timeout: float, started: float) -> str:
        """Until the launched server answers, at most ``timeout`` s after ``started``
        (time.monotonic()); returns its URL."""
        deadline = started + timeout
        for attempt in range(5):  # uvicorn exits with 3 when the port was taken meanwhile
            if attempt:
                self.spawn(self.env)
            assert self.process is not None
            while (code := self.process.poll()) is None and time.monotonic() < deadline:
                if _healthy(self.port):
                    self.url = f"http://127.0.0.1:{self.port}/api"
                    return self.url
                time.sleep(0.1)
            if code != 3:
                break
        self.stop()
        if code is None:
            raise LocalAPIError(
                f"Prefect's local API server did not answer within {timeout:g} s "
                "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); raise it, or set "
                "PREFECT_API_URL to a running server"
            )
        raise LocalAPIError(f"Prefect's local API server exited with code {code} while starting")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; PREFECT_API_URL is unset again."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.url and os.environ.get("PREFECT_API_URL") == self.url:
            del os.environ["PREFECT_API_URL"]

    def terminate(self) -> None:
        """SIGTERM without waiting (for an exit that cannot wait)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()


def _prefect_parent() -> str:
    """The folder holding the prefect package (uvicorn's --app-dir), without importing it."""
    spec = importlib.util.find_spec("prefect")
    if spec is None or not spec.submodule_search_locations:
        raise LocalAPIError("Prefect is not installed: pip install 'gpucnn[flows]'")
    return os.path.dirname(os.path.abspath(list(spec.submodule_search_locations)[0]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)  # no proxies, unlike urllib
    try:
        conn.request("GET", "/api/health")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


_local_api: _LocalAPI | None = None  # the server this process started, if any
_pending: tuple[float, float] | None = None  # (launched at, startup timeout) until it answers

# what the server's environment needs beyond this process's: ephemeral mode, no UI
_SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
}


def _stop_local_api() -> None:
    if _local_api is not None:
        _local_api.stop()


def start_local_api() -> None:
    """Launch Prefect's local API server, unless PREFECT_API_URL (or Prefect's settings: a
    profile, prefect.toml) names a server or ephemeral mode is off; it answers once
    :func:`wait_for_local_api` returns. It stops when this process exits (atexit: after
    Prefect has sent its last logs), or dies with it (SIGKILL included).

    In a process that has not imported Prefect yet, the server is launched first, then
    Prefect is imported here and its settings read: the two overlap (a server the settings
    turn out not to want is stopped at once)."""
    global _local_api, _pending
    if os.environ.get("PREFECT_API_URL") or _local_api is not None:
        return
    launched = time.monotonic()
    if "prefect" not in sys.modules:  # the server's imports overlap with ours
        _local_api = _LocalAPI()  # known before it starts: a signal meanwhile still stops it
        atexit.register(_stop_local_api)
        _local_api.spawn({**os.environ, **_SERVER_ENV})
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        if _local_api is not None:  # the configured server, or Prefect's own error if none
            _local_api.stop(grace=1.0)
            _local_api = None
        return
    if _local_api is None:
        _local_api = _LocalAPI()
        atexit.register(_stop_local_api)
        _local_api.spawn(
            {**os.environ, **_SERVER_ENV, **settings.to_environment_variables(exclude_unset=True)}
        )
    _pending = (launched, float(settings.server.ephemeral.startup_timeout_seconds))


def wait_for_local_api() -> str | None:
    """Wait until the server :func:`start_local_api` launched answers, then point
    PREFECT_API_URL (and Prefect's settings here) at it. Returns its URL, or None when no
    server was launched (one is configured).

    Raises:
        LocalAPIError: it did not answer in PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
            (it is stopped then; a later call may try again).
    """
    global _local_api, _pending
    if _local_api is None:
        return None
    if _pending is None:
        return _local_api.url
    import prefect.context
    from prefect.logging import configuration as prefect_logging

    launched, timeout = _pending
    try:
        url = _local_api.wait(timeout, launched)
    except LocalAPIError:  # stopped already; a later call may try again
        _local_api, _pending = None, None
        raise
    _pending = None
    os.environ["PREFECT_API_URL"] = url
    os.environ.setdefault("PREFECT_UI_URL", "")  # it serves no UI: no "View at" dead links
    refresh = getattr(prefect.context, "refresh_global_settings_context", None)
    if refresh is not None:
        refresh()
    else:  # older Prefect 3: what refresh_global_settings_context does
        prefect.context.GLOBAL_SETTINGS_CONTEXT = prefect.context.root_settings_context()
    # Prefect's logging set-up, as `import prefect` does, so that this line is shown
    getattr(prefect_logging, "ensure_logging_setup", lambda: None)()
    logging.getLogger("gpucnn.flows").info(
        "Prefect API: a local server on %s, stopped when this command ends",
        url,
        extra={"send_to_api": False},
    )
    return url


def terminate() -> None:
    """Tell the local server (if this process started one) to stop, without waiting."""
    if _local_api is not None:
        _local_api.terminate()
