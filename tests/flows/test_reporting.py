"""Reports to Prefect's API are off training's path: the epoch lines reach the flow run's
stored logs once each (with or without Prefect's own handler on gpucnn's logger), the
progress artifact is reported after the epoch's checkpoint, a reporter whose API does not
answer never raises, never makes its caller wait, and says so once, and what it holds
reaches the flow run when the API answers again within the flow's end's bounded wait (the
API's port shut and opened again by a gate in front of Prefect's own local API)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
import urllib.parse

import pytest

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def quick(mnist_mirror, tmp_path):
    return {
        "limit": 500,
        "epochs": 2,
        "device": "cpu",
        "data_dir": str(tmp_path / "data"),
        "mirrors": [mnist_mirror[0]],
    }


def flow_run_logs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )
    return [log.message for log in logs]


@pytest.mark.slow
def test_a_flow_runs_epoch_lines_and_progress_reach_prefect(quick, tmp_path):
    """As in a deployment's flow run (no extra-loggers setting): every epoch line in the flow
    run's stored logs once, the progress artifact linked to the training task at 100, and
    the run folder's own record of it all."""
    from prefect.client.orchestration import get_client

    from gpucnn.flows.pipeline import train_flow
    from gpucnn.flows.reporting import ProgressArtifact
    from gpucnn.train.callbacks import ModelCheckpoint

    state = train_flow(
        config=quick, output_dir=str(tmp_path / "runs"), run_name="reported", return_state=True
    )
    assert state.is_completed(), state
    messages = flow_run_logs(state.state_details.flow_run_id)
    for epoch in (1, 2):
        found = [m for m in messages if m.startswith(f"epoch {epoch}/2  train_loss")]
        assert len(found) == 1, messages

    assert ProgressArtifact.order > ModelCheckpoint.order  # it reports committed epochs
    with get_client(sync_client=True) as client:
        latest = client.read_latest_artifacts(limit=200)
    (artifact,) = [a for a in latest if a.key == "reported-progress"]
    assert artifact.type == "progress" and float(artifact.data) == 100.0
    assert artifact.task_run_id is not None

    text = (tmp_path / "runs" / "reported" / "log.txt").read_text()
    assert len(re.findall(r"gpucnn.train: epoch 2/2  train_loss", text)) == 1, text
    assert "Finished in state Completed" in text


def test_prefects_own_handler_on_gpucnn_does_not_double_the_lines(quick, tmp_path):
    """PREFECT_LOGGING_EXTRA_LOGGERS=gpucnn (the command lines set it) puts Prefect's API
    handler on the logger: the reporting session sends the lines instead of it, not beside it,
    and puts it back afterwards."""
    from prefect import flow
    from prefect.logging.handlers import APILogHandler

    from gpucnn.flows.pipeline import flow_run_scope
    from gpucnn.flows.tasks import train_model
    from gpucnn.train.config import TrainConfig

    @flow
    def train_only():
        with flow_run_scope():
            return train_model(TrainConfig(**quick), str(tmp_path / "run"))

    handler = APILogHandler()
    logging.getLogger("gpucnn").addHandler(handler)
    try:
        state = train_only(return_state=True)
        assert handler in logging.getLogger("gpucnn").handlers
    finally:
        logging.getLogger("gpucnn").removeHandler(handler)
    assert state.is_completed(), state
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # what Prefect's handler sent, if anything
    messages = flow_run_logs(state.state_details.flow_run_id)
    for epoch in (1, 2):
        found = [m for m in messages if m.startswith(f"epoch {epoch}/2  train_loss")]
        assert len(found) == 1, messages


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_reporter_whose_api_does_not_answer_never_raises_or_waits(caplog, monkeypatch):
    """Calls return at once; one warning however many tries fail; the flow's end waits its
    bound, no more, and says once what was not sent, artifacts by name; closing after it
    waits for nothing more."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from gpucnn.flows import reporting

    monkeypatch.setattr(reporting, "RETRY_S", (0.05, 0.1))

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{closed_port()}/api"}):
        reporter = reporting.Reporter()
    caplog.set_level(logging.INFO, logger="gpucnn.flows")
    t0 = time.perf_counter()
    state = reporter.new_progress("k", "d", 0.0, (None, None))
    for i in range(50):
        reporter.log({"name": "gpucnn.train", "level": 20, "message": f"line {i}"})
        reporter.set_progress(state, float(i))
    reporter.new_artifact("t", "table", "[]", "d", (None, None))
    assert time.perf_counter() - t0 < 0.5  # queued, not sent, by the caller
    deadline = time.monotonic() + 60  # its first try imports Prefect's client
    while reporter.failing is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # several more failed tries
    warnings = [r for r in caplog.records if "does not answer" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert "ConnectError" in warnings[0].getMessage()
    t0 = time.perf_counter()
    assert not reporter.flush(timeout=0.5)
    assert time.perf_counter() - t0 < 1.0  # its bound
    said = [r.getMessage() for r in caplog.records if "not sent" in r.getMessage()]
    assert len(said) == 1, said
    assert re.fullmatch(
        r"Prefect's API did not answer within 0\.5 s of the flow run's end \(ConnectError: .+\): "
        r"50 log line\(s\), the progress artifact 'k', the table artifact 't' not sent to the "
        r"flow run; a training run's log.txt has every line, and its folder the results the "
        r"artifacts show \(metrics.json, history.json\)",
        said[0],
    ), said
    t0 = time.perf_counter()
    reporter.close()
    assert time.perf_counter() - t0 < 1.0  # given up once: no second wait, no second warning
    assert len([r for r in caplog.records if "not sent" in r.getMessage()]) == 1


def test_a_flow_runs_end_says_once_what_stays_unsent(monkeypatch):
    """Inside a flow run whose reports cannot be sent: the end's wait gives up, saying so once
    (its own warning is not held as one more unsent line to say again at the close)."""
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from gpucnn.flows import reporting

    monkeypatch.setattr(reporting, "RETRY_S", (0.05, 0.1))

    class Said(logging.Handler):
        messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    @flow(name="unsent-reports")
    def unsent() -> bool:
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{closed_port()}/api"}):
            with reporting.session():
                logging.getLogger("gpucnn.train").warning("a line for the flow run")
                reporting.table_artifact("unsent-table", [{"a": float("nan")}], "d")
                return reporting.flush(timeout=1.0)

    said = Said()
    logging.getLogger("gpucnn.flows").addHandler(said)  # Prefect's set-up may reset the root's
    try:
        assert unsent() is False
    finally:
        logging.getLogger("gpucnn.flows").removeHandler(said)
    unsent_lines = [m for m in said.messages if "not sent" in m]
    assert len(unsent_lines) == 1, said.messages
    assert "1 log line(s), the table artifact 'unsent-table' not sent" in unsent_lines[0]


class Gate:
    """A port on 127.0.0.1 in front of another: while open it forwards each connection there,
    while shut nothing listens on it (a connection is refused, as by a stopped server)."""

    def __init__(self, target: int) -> None:
        self.target, self.port = target, closed_port()
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []

    def open(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def shut(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # shut
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def test_held_reports_reach_the_flow_run_when_the_api_answers_within_the_bound(monkeypatch):
    """The API's port refuses connections while lines and an artifact are reported, then opens
    3 s into the flow's end's wait: the wait ends as soon as they are sent, and the flow run
    has them all, once."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from gpucnn.flows import reporting

    monkeypatch.setattr(reporting, "RETRY_S", (0.2, 0.5))

    @flow(name="held-reports")
    def target() -> None:
        pass

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(target)
    gate = Gate(urllib.parse.urlsplit(PREFECT_API_URL.value()).port)
    try:
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{gate.port}/api"}):
            reporter = reporting.Reporter()
        ids = (None, flow_run.id)
        for i in range(20):
            reporter.log(
                {
                    "name": "gpucnn.train",
                    "level": 20,
                    "message": f"held line {i}",
                    "timestamp": "2026-01-01T00:00:00Z",
                    "flow_run_id": str(flow_run.id),
                }
            )
        reporter.new_artifact("held-table", "table", json.dumps([{"a": 1}]), "d", ids)
        deadline = time.monotonic() + 60
        while reporter.failing is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        opened = threading.Timer(3.0, gate.open)
        opened.start()
        t0 = time.perf_counter()
        assert reporter.flush(timeout=60)
        waited = time.perf_counter() - t0
        assert 2.5 < waited < 20, waited
        reporter.close()
    finally:
        gate.shut()
    assert flow_run_logs(flow_run.id) == [f"held line {i}" for i in range(20)]
    with get_client(sync_client=True) as client:
        latest = {a.key: a for a in client.read_latest_artifacts(limit=200)}
    assert latest["held-table"].type == "table" and latest["held-table"].flow_run_id == flow_run.id
