"""Prefect's local API server, started by the command lines as a child that cannot outlive them.

Unless PREFECT_API_URL (or the active Prefect profile) names a server, :func:`start_local_api`
starts Prefect's local API server (the uvicorn app and SQLite database of Prefect's ephemeral
mode) as a child of this process: it runs in a session of its own, so a Ctrl-C in the terminal
reaches only this process, which stops it on the way out (after Prefect has sent its last
logs); and it is bound to die with this process (Linux: prctl PR_SET_PDEATHSIG; elsewhere it
polls its parent), so even a SIGKILL leaves nothing running. PREFECT_API_URL then points at
it, for Prefect here and for any process started from here (Dask workers included).
"""

from __future__ import annotations

import atexit
import http.client
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
        self.url: str | None = None

    def start(self, env: dict[str, str], timeout: float) -> str:
        import prefect

        deadline = time.monotonic() + timeout
        for _ in range(5):  # uvicorn exits with 3 when the port was taken meanwhile
            port = _free_port()
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _SERVER_CHILD,
                    str(os.getpid()),
                    "--app-dir",
                    str(prefect.__module_path__.parent),
                    "--factory",
                    "prefect.server.api.server:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
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
            while (code := self.process.poll()) is None and time.monotonic() < deadline:
                if _healthy(port):
                    self.url = f"http://127.0.0.1:{port}/api"
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


def _stop_local_api() -> None:
    if _local_api is not None:
        _local_api.stop()


def start_local_api() -> str | None:
    """Start Prefect's local API server unless PREFECT_API_URL (or the active Prefect profile)
    names a server or ephemeral mode is off; point PREFECT_API_URL at it. Returns its URL, or
    None when nothing was started. It stops when this process exits (atexit: after Prefect
    has sent its last logs), or dies with it (SIGKILL included)."""
    global _local_api
    if os.environ.get("PREFECT_API_URL"):
        return None
    if _local_api is not None:
        return _local_api.url
    import prefect.context
    from prefect.logging import configuration as prefect_logging
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None  # the configured server, or Prefect's own error when there is none
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **settings.to_environment_variables(exclude_unset=True),
    }
    _local_api = _LocalAPI()  # known before it starts: a signal meanwhile still stops it
    atexit.register(_stop_local_api)
    try:
        url = _local_api.start(env, float(settings.server.ephemeral.startup_timeout_seconds))
    except LocalAPIError:  # stopped already; a later call may try again
        _local_api = None
        raise
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
