"""A deployment run for real: a local `prefect server start` (SQLite in a temporary
PREFECT_HOME), a process work pool, `prefect deploy` of flows/prefect.yaml, a worker, and
run_deployment; the run must complete, leave metrics in its run folder and its epoch lines in
the flow run's logs (no PREFECT_LOGGING_EXTRA_LOGGERS, as a user's worker has none), and a
refused second run must name the way out as the deployment's parameters, with one traceback
at most in the worker's console. The deployments set the flow runs' heartbeats (every 30 s)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gpucnn.train.atomic import write_json
from gpucnn.train.config import TrainConfig

pytest.importorskip("prefect")

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "prefect server exited early"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("prefect server did not become healthy")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_deployment_run_completes_against_a_local_server(mnist_mirror, tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PWD": str(ROOT),
        "PYTHONPATH": str(ROOT),
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # the worker picks a run up within 2 s
    }
    env.pop("PREFECT_LOGGING_EXTRA_LOGGERS", None)
    procs = []
    try:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=ROOT,
            env=env,
            start_new_session=True,
            stdout=open(tmp_path / "server.log", "w"),
            stderr=subprocess.STDOUT,
        )
        procs.append(server)
        wait_healthy(api, server)
        prefect(["work-pool", "create", "gpucnn-process", "--type", "process"], env)
        prefect(["--no-prompt", "deploy", "--all", "--prefect-file", "flows/prefect.yaml"], env)
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "gpucnn-process"],
            cwd=ROOT,
            env=env,
            start_new_session=True,
            stdout=open(tmp_path / "worker.log", "w"),
            stderr=subprocess.STDOUT,
        )
        procs.append(worker)

        runs = tmp_path / "runs"
        params = {
            "config": {
                "limit": 600,
                "epochs": 1,
                "device": "cpu",
                "data_dir": str(tmp_path / "data"),
                "mirrors": [mnist_mirror[0]],
            },
            "output_dir": str(runs),
            "run_name": "deployed",
        }
        # a second run, at the same time, on a folder that holds a run of another config
        write_json(runs / "refused" / "config.json", TrainConfig(lr=0.01).to_dict())
        refusing = {**params, "run_name": "refused"}
        code = (
            "import json, sys, time\n"
            "from prefect import get_client\n"
            "from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId\n"
            "from prefect.deployments import run_deployment\n"
            "runs = [run_deployment('gpucnn-train/train', parameters=p, timeout=0)"
            " for p in json.loads(sys.argv[1])]\n"
            "deadline, out = time.time() + 600, []\n"
            "with get_client(sync_client=True) as client:\n"
            "    while not all(r.state.is_final() for r in runs) and time.time() < deadline:\n"
            "        time.sleep(1)\n"
            "        runs = [client.read_flow_run(r.id) for r in runs]\n"
            "    deployment = client.read_deployment_by_name('gpucnn-train/train')\n"
            "    out.append(deployment.job_variables)\n"
            "    for r in runs:\n"
            "        logs = client.read_logs(log_filter=LogFilter(flow_run_id="
            "LogFilterFlowRunId(any_=[r.id])), limit=200)\n"
            "        out.append({'state': [r.state.type.value, r.state.name],"
            " 'message': r.state.message, 'logs': [log.message for log in logs]})\n"
            "print(json.dumps(out))\n"
        )
        running = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps([params, refusing])],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # stopped as the others are, if the test fails meanwhile
        )
        procs.append(running)
        # meanwhile, a re-deploy (updating the deployments) says nothing of deprecations
        again = prefect(
            ["--no-prompt", "deploy", "--all", "--prefect-file", "flows/prefect.yaml"], env
        )
        for word in ("Warning", "deprecated"):
            assert word not in again.stdout + again.stderr, again.stdout + again.stderr
        stdout, stderr = running.communicate(timeout=660)
        worker_log = (tmp_path / "worker.log").read_text()
        assert running.returncode == 0, stderr + worker_log[-3000:]
        job_variables, done, refused = json.loads(stdout.splitlines()[-1])
        assert job_variables["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30", job_variables

        assert done["state"] == ["COMPLETED", "Completed"], (done, worker_log[-3000:])
        metrics = json.loads((runs / "deployed" / "metrics.json").read_text())
        assert metrics["samples"] == 10000 and 0.0 <= metrics["accuracy"] <= 1.0
        assert (runs / "deployed" / "checkpoints" / "best.npz").exists()
        epochs = [m for m in done["logs"] if m.startswith("epoch 1/1  train_loss")]
        assert len(epochs) == 1, done["logs"]
        assert any(m.startswith("fetching ") for m in done["logs"]), done["logs"]  # gpucnn.data

        # refused, the way out said as the deployment's parameters
        assert refused["state"][0] == "FAILED", (refused, worker_log[-3000:])
        message = refused["message"]
        assert "another config" in message and "overwrite=true" in message, refused
        assert "run_name=..." in message and "--overwrite" not in message, refused
        assert message.startswith("RunFolderError: "), refused  # a refusal, not a crash
        assert worker_log.count("Traceback (most recent call last)") <= 1, worker_log
    finally:
        for p in reversed(procs):
            stop(p)
