"""Training outlives its orchestrator, with real parts: `python -m gpucnn.flows.train` against
a real Prefect server that is stopped mid-training, stays away across the end of training and
evaluation for longer than the client's retries, and is started again; and a training command
whose standard output, a pipe, is closed by its reader mid-run (as when the Prefect worker
streaming it is killed)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.processes import DETERMINISTIC_ENV

pytest.importorskip("prefect", reason="the flows need the 'flows' extra (prefect)")

ROOT = Path(__file__).resolve().parents[2]

# Prefect's own server app, as `prefect server start` serves it, in a process that imports
# it first and binds its port only once the file argv[2] exists: a restart then takes the
# app's start-up (about 2 s), not the import (about 10 s on a busy 2-core machine)
SERVER = r"""
import pathlib, sys, time
import uvicorn
from prefect.server.api.server import create_app
go = pathlib.Path(sys.argv[2])
while not go.exists():
    time.sleep(0.05)
uvicorn.run(create_app(final=True), host="127.0.0.1", port=int(sys.argv[1]), log_level="error")
"""

# The same run with no Prefect at all: what the interrupted one must equal
REFERENCE = r"""
import json, sys
from gpucnn.train import recipe
from gpucnn.train.config import TrainConfig
config = TrainConfig(**json.loads(sys.argv[1]))
recipe.train(config, sys.argv[2], progress=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A Prefect server on ``port`` with its database in PREFECT_HOME: start() serves,
    stop() stops; a later start() is the same server restarted (same port and database).
    prepare() starts the next process ahead, so that it has imported Prefect by then."""

    def __init__(self, port: int, env: dict, log: Path) -> None:
        self.port, self.env, self.log = port, env, log
        self.procs: list[tuple[subprocess.Popen, Path]] = []  # serving first, then prepared
        self.n = 0

    def prepare(self) -> None:
        self.n += 1
        go = self.log.with_name(f"go-{self.n}")
        with self.log.open("a") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", SERVER, str(self.port), str(go)],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((proc, go))

    def start(self, timeout: float = 180) -> float:
        """Serve with the next prepared process (one is started if none is); returns the
        seconds it took to answer."""
        if not self.procs:
            self.prepare()
        proc, go = self.procs[0]
        t0 = time.monotonic()
        go.touch()
        while not healthy(self.port):
            assert proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() - t0 < timeout, "the Prefect server did not answer"
            time.sleep(0.05)
        return time.monotonic() - t0

    def stop(self, first: bool = False) -> None:
        """Stop the serving process (``first``), or every process."""
        for proc, _ in self.procs[:1] if first else self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.procs = self.procs[1:] if first else []


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def flow_run_logs(client, flow_run_id) -> list:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return client.read_logs(
        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
    )


def committed_epoch(run: Path) -> int:
    """The epoch the run's last checkpoint holds (0: none yet)."""
    from gpucnn.train import load_checkpoint
    from gpucnn.train.errors import CheckpointError

    try:
        return load_checkpoint(run / "checkpoints" / "last.npz").epoch
    except (CheckpointError, OSError):  # not there yet
        return 0


def assert_same_run(run: Path, reference: Path) -> None:
    a, b = (json.loads((p / "history.json").read_text()) for p in (run, reference))
    timed = {"elapsed_s", "images_per_s"}
    assert {k: v for k, v in a.items() if k not in timed} == {
        k: v for k, v in b.items() if k not in timed
    }
    for name in ("last.npz", "best.npz"):
        x, y = (np.load(p / "checkpoints" / name) for p in (run, reference))
        for key in x.files:
            if x[key].dtype.kind in "fiub":
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{name}: {key}")
    summary = json.loads((run / "summary.json").read_text())
    assert summary == {
        **json.loads((reference / "summary.json").read_text()),
        **{k: summary[k] for k in ("best_checkpoint", "train_time_s")},
    }
    assert json.loads((run / "metrics.json").read_text())["samples"] == 10000  # evaluated


LIMIT, EPOCHS = 2000, 4
RETRIES = 1  # the training command's Prefect client: one retry, after 2 s (+-20%)
AWAY_AFTER_THE_END_S = 15.0  # past the client's retries, well inside the end's 60 s wait


@pytest.mark.slow
def test_a_run_outlives_a_prefect_server_outage_across_its_end(
    mnist_root, migrated_database, tmp_path
):
    """The server goes away after epoch 1 and stays away through the rest of training and the
    evaluation, and for AWAY_AFTER_THE_END_S more (the client's retries long over): training
    goes on at its pace, every epoch's checkpoint is written, the evaluation's artifacts are
    held, and the flow's end waits for the server; back, it gets everything: the flow run
    ends Completed, its stored logs have every epoch line once (the outage's included) and
    the flow's own lines, its artifacts are there, its tasks Completed; the run equals a run
    with no Prefect at all."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **DETERMINISTIC_ENV,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{migrated_database}",
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_CLIENT_MAX_RETRIES": str(RETRIES),
    }
    config = {"limit": LIMIT, "epochs": EPOCHS, "device": "cpu", "data_dir": str(mnist_root)}
    server = Server(port, env, tmp_path / "server.log")
    reference = subprocess.Popen(
        [sys.executable, "-c", REFERENCE, json.dumps(config), str(tmp_path / "reference")],
        cwd=ROOT,
        env=DETERMINISTIC_ENV,
        stderr=subprocess.PIPE,
    )
    train = None
    try:
        server.start()
        server.prepare()  # the restart's process: it imports Prefect's server meanwhile
        run = tmp_path / "runs" / "outage"
        with (tmp_path / "train.log").open("w") as out:
            train = subprocess.Popen(
                [sys.executable, "-m", "gpucnn.flows.train", "--run-name", "outage"]
                + ["--limit", str(LIMIT), "--epochs", str(EPOCHS), "--device", "cpu"]
                + ["--data-dir", str(mnist_root), "--output-dir", str(tmp_path / "runs")],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        output = lambda: (tmp_path / "train.log").read_text()  # noqa: E731
        deadline = time.monotonic() + 300
        while committed_epoch(run) < 1:
            assert train.poll() is None, output()
            assert time.monotonic() < deadline, output()
            time.sleep(0.05)
        server.stop(first=True)
        down = time.monotonic()
        # away through training and evaluation, and AWAY_AFTER_THE_END_S past them
        seen, evaluated = set(), None
        while evaluated is None or time.monotonic() - evaluated < AWAY_AFTER_THE_END_S:
            seen.add(committed_epoch(run))
            if evaluated is None and (run / "metrics.json").exists():
                evaluated = time.monotonic()
            assert train.poll() is None, output()  # the flow's end waits for the server
            assert time.monotonic() - down < 240, output()
            time.sleep(0.05)
        outage = time.monotonic() - down
        restart = server.start()
        code = train.wait(timeout=120)
        assert code == 0, output()
        assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()
        assert {2, EPOCHS} <= seen, f"epochs committed during the {outage:.1f} s outage: {seen}"
        assert committed_epoch(run) == EPOCHS
        assert "Prefect's API does not answer" in output()
        assert "not sent" not in output(), output()
        assert_same_run(run, tmp_path / "reference")
        text = (run / "log.txt").read_text()
        for epoch in range(1, EPOCHS + 1):
            assert len(re.findall(rf"gpucnn.train: epoch {epoch}/{EPOCHS} ", text)) == 1, text

        # what the flow run left in Prefect, the server back
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            (flow_run,) = [
                r
                for r in client.read_flow_runs(limit=200)
                if r.parameters.get("output_dir") == str(tmp_path / "runs")
            ]
            messages = [m.message for m in flow_run_logs(client, flow_run.id)]
            latest = {a.key: a for a in client.read_latest_artifacts(limit=200)}
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            )
    finally:
        if train is not None and train.poll() is None:
            train.kill()
        reference.kill()
        server.stop()
    assert flow_run.state.is_completed(), flow_run.state
    for epoch in range(1, EPOCHS + 1):
        found = [m for m in messages if m.startswith(f"epoch {epoch}/{EPOCHS} ")]
        assert len(found) == 1, (epoch, messages)
    assert len([m for m in messages if m.startswith("test accuracy ")]) == 1, messages
    assert float(latest["outage-progress"].data) == 100.0
    assert latest["outage-per-class-accuracy"].type == "table", latest
    assert "test accuracy" in latest["outage-summary"].data
    states = {t.name: t.state_type.value for t in tasks}
    assert states["train-model"] == states["evaluate-model"] == "COMPLETED", states
    print(f"outage {outage:.1f} s, restart {restart:.1f} s")  # shown with -s


@pytest.mark.slow
def test_training_outlives_its_closed_stdout(prefect_api, mnist_root, tmp_path):
    """stdout and stderr are one pipe whose reader goes away after epoch 1's line: the run
    goes on to its end (exit status 0), and its log.txt has the rest, with a line saying
    where the console went."""
    from prefect.settings import PREFECT_API_URL

    run = tmp_path / "runs" / "piped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpucnn.flows.train", "--run-name", "piped"]
        + ["--limit", "1000", "--epochs", "3", "--device", "cpu"]
        + ["--data-dir", str(mnist_root), "--output-dir", str(tmp_path / "runs")],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    read = b""
    try:
        for line in proc.stdout:
            read += line
            if b"epoch 1/3 " in line:
                break
        proc.stdout.close()  # the reader goes away mid-run
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = (run / "log.txt").read_text() if (run / "log.txt").exists() else ""
    assert b"epoch 1/3 " in read, read.decode(errors="replace")
    assert code == 0, read.decode(errors="replace") + text
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 3 and (run / "metrics.json").exists()
    assert re.search(r"WARNING .*(stdout|stderr) went away \(BrokenPipeError", text), text
    for epoch in (1, 2, 3):
        assert len(re.findall(rf"gpucnn.train: epoch {epoch}/3 ", text)) == 1, text
    assert "Finished in state Completed" in text
