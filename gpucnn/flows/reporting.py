"""A flow run's reports to Prefect's API, off the work's path.

Nothing gpucnn does waits for Prefect or fails because of it. While a flow runs
(:func:`session`), its reports are queued by the thread that makes them and sent by one thread
of this process (:class:`Reporter`): gpucnn's log lines (epochs, early stopping, learning-rate
changes, the device picked) and the flow's and its tasks' own (Prefect's run loggers), the
run's progress artifact, and the evaluation's table and summary artifacts
(:func:`table_artifact`, :func:`markdown_artifact`). When the API does not answer (its
server stopped or restarting, the network gone), nothing is raised and nothing waits for it:
one warning says so, the reports are held in memory (the newest MAX_HELD log lines, every
artifact, only the latest progress), and they are sent, in order, when the API answers
again; one line says that too.

At a flow run's end (:func:`flush`, and the last session's close) the reporter waits up to
CLOSE_TIMEOUT_S (60 s) for the API to answer and sends what it holds; only then does it give
up, saying how many log lines and which artifacts stayed unsent (a training run's log.txt
has every line; its folder, the results the artifacts show).

gpucnn's lines reach the flow run's logs once each: in a session, Prefect's own API handlers
on the ``gpucnn`` logger (PREFECT_LOGGING_EXTRA_LOGGERS=gpucnn attaches one) and on its run
loggers (which drop what they cannot send at once) step aside and this module's handler
sends their lines instead; with none on ``gpucnn``, as in a deployment's flow run, this
handler is what brings gpucnn's lines there at all.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

from gpucnn.logs import LOGGER
from gpucnn.train.callbacks import Callback, ModelCheckpoint
from gpucnn.train.runs import artifact_key

MAX_HELD = 10_000  # log lines held while the API does not answer (the oldest dropped first)
BATCH_S = 0.5  # lines gather this long before they are sent together
RETRY_S = (1.0, 2.0, 4.0, 5.0)  # waits between tries while the API does not answer
REQUEST_TIMEOUT_S = 10.0  # per request of the reporter's client
CLOSE_TIMEOUT_S = 60.0  # how long a flow run's end waits for the API to take what is held
# Prefect's loggers of flow and task runs: their API handlers step aside in a session
PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")

log = logging.getLogger("gpucnn.flows")


class _Artifact:
    """One artifact: what was asked for, and what the API has. A progress artifact is created,
    then updated (only its latest value is sent); a table or markdown artifact is created once."""

    def __init__(self, key: str, kind: str, description: str, value: Any, ids: tuple) -> None:
        self.key, self.kind, self.description, self.value = key, kind, description, value
        self.task_run_id, self.flow_run_id = ids
        self.artifact_id: Any = None  # known once created
        self.sent: Any = None
        self.refused = False  # the API refused it: not tried again

    @property
    def unsent(self) -> bool:
        if self.refused:
            return False
        return self.artifact_id is None or (self.kind == "progress" and self.sent != self.value)

    def __str__(self) -> str:
        return f"the {self.kind} artifact {self.key!r}"


class Reporter:
    """Sends log lines and artifacts to Prefect's API from a thread of its own.

    Its calls (:meth:`log`, :meth:`new_progress`, :meth:`set_progress`, :meth:`new_artifact`)
    only queue and return at once; they never raise because of the API. The thread runs in a
    copy of the creating thread's context, so it talks to the API that thread's settings name.
    """

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._lines: collections.deque[tuple[int, dict]] = collections.deque()
        self._numbers = itertools.count()
        self._dropped = 0  # lines dropped (MAX_HELD) since the API last answered
        self._artifacts: list[_Artifact] = []
        self._closing = False
        self._deadline = 0.0
        self._waited = 0.0  # how long the flow run's end waited before that warning
        self._gave_up = False  # a flush gave up, and the API has not answered since
        self.failing: str | None = None  # why the API does not answer, while it does not
        self._refusals = 0  # reports the API refused (the first is said)
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name="gpucnn-prefect-reports", daemon=True
        )
        self._thread.start()

    # -- what the run's threads call --------------------------------------------------------
    def log(self, payload: dict[str, Any]) -> None:
        """Queue one log line (a LogCreate-shaped dict, as Prefect's handler prepares it)."""
        with self._wake:
            self._lines.append((next(self._numbers), payload))
            if len(self._lines) > MAX_HELD:
                self._lines.popleft()
                self._dropped += 1
            self._wake.notify_all()

    def new_progress(self, key: str, description: str, value: float, ids: tuple) -> _Artifact:
        """Queue a progress artifact's creation; ``ids`` are its (task run, flow run) ids."""
        return self.new_artifact(key, "progress", value, description, ids)

    def set_progress(self, state: _Artifact, value: float) -> None:
        """Queue a new value for a progress artifact (only the latest is sent)."""
        with self._wake:
            state.value = value
            self._wake.notify_all()

    def new_artifact(
        self, key: str, kind: str, data: Any, description: str, ids: tuple
    ) -> _Artifact:
        """Queue an artifact's creation: ``kind`` "table" (``data``: its rows as JSON text),
        "markdown" (the text) or "progress" (a percentage); ``ids``: its (task run, flow run)
        ids."""
        state = _Artifact(key, kind, description, data, ids)
        with self._wake:
            self._artifacts.append(state)
            self._wake.notify_all()
        return state

    def flush(self, timeout: float = CLOSE_TIMEOUT_S) -> bool:
        """Wait at most ``timeout`` seconds for everything queued so far to reach the API
        (the tries go on meanwhile); True when it did. When it did not, a warning says what
        stays unsent, and why; until the API answers again, a later flush waits no more (a
        flow run's end waits once)."""
        with self._wake:
            said = self._gave_up  # what stays unsent is said once
            if said:
                timeout = 0.0
            else:
                self._waited = timeout
            self._wake.notify_all()
            done = self._wake.wait_for(lambda: not self._pending(), timeout=timeout)
            unsent = self._unsent()
            self._gave_up = not done
        if not done and not said:
            self._say_unsent(unsent)
        return done

    def close(self, timeout: float = CLOSE_TIMEOUT_S, quiet: bool = False) -> None:
        """Send what is held, waiting at most ``timeout`` seconds (as :meth:`flush`), then
        stop; a warning says what could not be sent (unless ``quiet``)."""
        if not quiet:
            self.flush(timeout)
            timeout = 0.0
        with self._wake:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._wake.notify_all()
        self._thread.join(timeout + 0.5 if timeout > 0 else 0.1)  # a request may be under way

    # -- the reporter's thread --------------------------------------------------------------
    def _pending(self) -> bool:
        return bool(self._lines) or any(a.unsent for a in self._artifacts)

    def _unsent(self) -> tuple[int, int, list[str]]:
        """(lines held, lines dropped, artifacts unsent); called holding the lock."""
        return len(self._lines), self._dropped, [str(a) for a in self._artifacts if a.unsent]

    def _say_unsent(self, unsent: tuple[int, int, list[str]]) -> None:
        lines, dropped, artifacts = unsent
        if not (lines or artifacts):
            return
        older = f" (and {dropped} older ones dropped)" if dropped else ""
        what = [f"{lines} log line(s){older}"] if lines else []
        log.warning(
            "Prefect's API did not answer within %g s of the flow run's end (%s): %s not sent "
            "to the flow run; a training run's log.txt has every line, and its folder the "
            "results the artifacts show (metrics.json, history.json)",
            self._waited,
            self.failing or "no answer yet",
            ", ".join(what + artifacts),
            extra={"send_to_api": False},  # it could not be sent: not held as one more line
        )

    def _run(self) -> None:
        tries = 0
        while True:
            with self._wake:
                while not self._pending() and not self._closing:
                    self._wake.wait()
                if not self._pending() or (self._closing and time.monotonic() >= self._deadline):
                    return
                lines = list(itertools.islice(self._lines, 500))
                artifacts = [a for a in self._artifacts if a.unsent]
                dropped = self._dropped
            error = self._send(lines, artifacts)
            with self._wake:
                self._wake.notify_all()  # a flush waiting sees what was sent
                if error is None:
                    self._dropped -= dropped
                    self._gave_up = False
            if error is None:
                if self.failing is not None:
                    log.info(
                        "Prefect's API answers again; the reports held meanwhile are sent%s",
                        f" ({dropped} older log lines were dropped)" if dropped else "",
                    )
                    self.failing, tries = None, 0
                pause = BATCH_S
            else:
                if self.failing is None:
                    self.failing = error
                    log.warning(
                        "Prefect's API does not answer (%s); the run goes on, and its log "
                        "lines and artifacts are held until the API answers again",
                        error,
                    )
                pause = RETRY_S[min(tries, len(RETRY_S) - 1)]
                tries += 1
            with self._wake:  # a close cuts a pause short, not the tries before its deadline
                if not self._closing:
                    self._wake.wait_for(lambda: self._closing, timeout=pause)
                elif error is not None:
                    self._wake.wait(max(0.0, min(pause, self._deadline - time.monotonic())))

    def _sent(self, lines: list[tuple[int, dict]]) -> None:
        """Forget ``lines`` (those still held: lines dropped meanwhile are gone already)."""
        last = lines[-1][0]
        with self._wake:
            while self._lines and self._lines[0][0] <= last:
                self._lines.popleft()

    def _send(self, lines: list[tuple[int, dict]], artifacts: list[_Artifact]) -> str | None:
        """One round of requests on a fresh client (a refused connection fails at once,
        instead of being retried for a minute as a long-lived client is); None when the API
        answered, else why not. What the API refuses (a 4xx answer: it will not change its
        mind) is dropped with a warning rather than tried forever."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate

        def refused(exc: Exception, what: str) -> bool:
            status = getattr(getattr(exc, "response", None), "status_code", 0)
            if 400 <= status < 500 and status not in (408, 429):
                if not self._refusals:
                    log.warning("Prefect's API refused %s (%s); not sent", what, exc)
                self._refusals += 1
                return True
            return False

        try:
            with get_client(
                httpx_settings={"timeout": REQUEST_TIMEOUT_S}, sync_client=True
            ) as client:
                if lines:
                    try:
                        client.create_logs([payload for _, payload in lines])
                    except Exception as exc:
                        if not refused(exc, f"{len(lines)} log line(s)"):
                            raise
                    self._sent(lines)  # before the artifacts: a failure there resends nothing
                for state in artifacts:
                    value = state.value
                    try:
                        if state.artifact_id is None:
                            state.artifact_id = client.create_artifact(
                                ArtifactCreate(
                                    key=state.key,
                                    type=state.kind,
                                    description=state.description,
                                    data=value,
                                    task_run_id=state.task_run_id,
                                    flow_run_id=state.flow_run_id,
                                )
                            ).id
                        else:
                            client.update_artifact(state.artifact_id, ArtifactUpdate(data=value))
                    except Exception as exc:
                        if not refused(exc, str(state)):
                            raise
                        state.refused = True
                    state.sent = value
        except Exception as exc:  # whatever the API or the network says: reported, held
            return f"{type(exc).__name__}: {exc}".splitlines()[0]
        return None


class _Forward(logging.Handler):
    """Hands the log records made inside a flow or task run to the reporter."""

    def __init__(self, reporter: Reporter) -> None:
        from prefect.logging.handlers import APILogHandler

        super().__init__(level=logging.NOTSET)
        self.reporter = reporter
        self._prepare = APILogHandler().prepare  # the run's ids from the context, as Prefect

    def emit(self, record: logging.LogRecord) -> None:
        from prefect.exceptions import MissingContextError

        if not getattr(record, "send_to_api", True):
            return
        try:
            payload = self._prepare(record)
        except MissingContextError:  # not in a flow run: nothing to send it to
            return
        except Exception:
            self.handleError(record)
            return
        payload.pop("__payload_size__", None)
        self.reporter.log(payload)


class _Open:
    """The process's open sessions: their reporter, its handler, and Prefect's API handlers
    set aside meanwhile."""

    def __init__(self) -> None:
        self.reporter = Reporter()
        self.handler = _Forward(self.reporter)
        self.aside = _api_handlers()
        self.sessions = 0
        self.loggers: list[logging.Logger] = []  # those the handler is on

    def attach(self) -> None:
        from prefect.settings import get_current_settings

        for lg, h in self.aside:
            lg.removeHandler(h)
        if get_current_settings().logging.to_api.enabled:
            # gpucnn's, and Prefect's run loggers whose API handler stepped aside
            self.loggers = [logging.getLogger(LOGGER)]
            self.loggers += [lg for lg, _ in self.aside if lg.name in PREFECT_RUN_LOGGERS]
            for lg in self.loggers:
                lg.addHandler(self.handler)

    def detach(self) -> None:
        for lg in self.loggers:
            lg.removeHandler(self.handler)
        for lg, h in self.aside:
            lg.addHandler(h)


_open: _Open | None = None
_open_guard = threading.Lock()


def _api_handlers() -> list[tuple[logging.Logger, logging.Handler]]:
    """Prefect's API handlers on gpucnn's loggers (the extra-loggers setting's) and on
    Prefect's run loggers."""
    from prefect.logging.handlers import APILogHandler

    loggers = [logging.getLogger(n) for n in (LOGGER, *PREFECT_RUN_LOGGERS)] + [
        v
        for k, v in list(logging.Logger.manager.loggerDict.items())
        if k.startswith(LOGGER + ".") and isinstance(v, logging.Logger)
    ]
    return [(lg, h) for lg in loggers for h in lg.handlers if type(h) is APILogHandler]


@contextlib.contextmanager
def session() -> Iterator[Reporter]:
    """Report through one :class:`Reporter` while the block runs (sessions nest and may
    overlap in threads: one reporter per process, closed when the last session ends, after
    waiting up to CLOSE_TIMEOUT_S for what it holds). Leaving by an interrupt (Ctrl-C,
    SIGTERM: not an Exception) waits for nothing and says nothing."""
    global _open
    with _open_guard:
        if _open is None:
            _open = _Open()
            _open.attach()
        _open.sessions += 1
        reporter = _open.reporter
    interrupted = True
    try:
        yield reporter
        interrupted = False
    except Exception:
        interrupted = False
        raise
    finally:
        with _open_guard:
            ending, _open.sessions = _open, _open.sessions - 1
            if ending.sessions == 0:
                ending.detach()
                _open = None
            else:
                ending = None
        if ending is not None:
            ending.reporter.close(0.0 if interrupted else CLOSE_TIMEOUT_S, quiet=interrupted)


def current() -> Reporter | None:
    """The reporter of the open session, if any."""
    with _open_guard:
        return _open.reporter if _open is not None else None


def flush(timeout: float = CLOSE_TIMEOUT_S) -> bool:
    """A flow run's end: wait at most ``timeout`` seconds for the open session's reporter to
    send what it holds (see :meth:`Reporter.flush`: a warning says what stays unsent). Call
    it where the run's log.txt still takes that warning. True when all was sent (or there is
    no session)."""
    reporter = current()
    return True if reporter is None else reporter.flush(timeout)


def _artifact(key: str, kind: str, data: str, description: str) -> None:
    from prefect.utilities.context import get_task_and_flow_run_ids

    with session() as reporter:  # the flow's, when it has one
        reporter.new_artifact(key, kind, data, description, get_task_and_flow_run_ids())


def table_artifact(key: str, table: list[dict[str, Any]], description: str) -> None:
    """Queue a table artifact of the current flow or task run, as Prefect's
    create_table_artifact makes it (NaN shown as empty), sent by the session's reporter:
    never raising because of the API, never waiting for it (outside a session, the one opened
    for it waits at its close)."""
    rows = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in table
    ]
    _artifact(key, "table", json.dumps(rows), description)


def markdown_artifact(key: str, markdown: str, description: str) -> None:
    """Queue a markdown artifact of the current flow or task run (as :func:`table_artifact`)."""
    _artifact(key, "markdown", markdown, description)


class ProgressArtifact(Callback):
    """A Prefect progress artifact of the epochs completed, updated after every epoch.

    It runs after ModelCheckpoint (``order``): what it reports is committed to disk. Its
    updates go through the session's :class:`Reporter` (never waiting for the API, never
    raising into the fit); outside a session they are not sent.
    """

    order = ModelCheckpoint.order + 10

    def __init__(self, epochs: int, run_name: str) -> None:
        self.epochs, self.run_name = epochs, run_name
        self.state: _Artifact | None = None
        self.reporter: Reporter | None = None

    def on_train_begin(self, trainer: Any) -> None:
        from prefect.utilities.context import get_task_and_flow_run_ids

        self.reporter = current()
        if self.reporter is None:
            return
        self.state = self.reporter.new_progress(
            artifact_key(self.run_name, "progress"),
            f"{self.run_name}: epochs completed (of at most {self.epochs})",
            100.0 * trainer.epoch / self.epochs,
            get_task_and_flow_run_ids(),
        )

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> None:
        if self.reporter is not None and self.state is not None:
            done = 100.0 if trainer.stop_training else 100.0 * trainer.epoch / self.epochs
            self.reporter.set_progress(self.state, min(done, 100.0))

    def on_train_end(self, trainer: Any) -> None:
        if self.reporter is not None and self.state is not None:
            self.reporter.set_progress(self.state, 100.0)
