"""A dead run is detected, with real parts: `python -m gpucnn.flows.train` against a real
Prefect server holding the automation of flows/automations.yaml (created with the command the
manual gives), its flow run's heartbeats every 30 s (the command line sets them), its process
killed with SIGKILL mid-training: the flow run leaves Running for Crashed within the time
the automation documents."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("prefect", reason="the flows need the 'flows' extra (prefect)")

import yaml  # noqa: E402 - Prefect's dependency

from tests.flows.test_outages import Server, committed_epoch, free_port  # noqa: E402
from tests.processes import DETERMINISTIC_ENV  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
AUTOMATIONS = ROOT / "flows" / "automations.yaml"
HEARTBEAT_S = 30  # what the command line sets (gpucnn.flows.cli.HEARTBEAT_S)
SILENCE_S = 90  # the automation's window after a heartbeat (flows/automations.yaml)
EVALUATED_S = 5  # how often Prefect's server evaluates such an automation (its default)


def test_the_automation_watches_gpucnn_flows_for_the_documented_silence():
    (automation,) = yaml.safe_load(AUTOMATIONS.read_text())["automations"]
    trigger = automation["trigger"]
    assert trigger["posture"] == "Proactive" and trigger["within"] == SILENCE_S
    assert trigger["after"] == ["prefect.flow-run.heartbeat"]
    assert trigger["match_related"]["prefect.resource.name"] == [
        "gpucnn-train",
        "gpucnn-evaluate",
        "gpucnn-sweep",
    ]
    (action,) = automation["actions"]
    assert action["type"] == "change-flow-run-state" and action["state"] == "CRASHED"
    assert SILENCE_S >= 3 * HEARTBEAT_S  # two heartbeats may be late before a live run is hit
    deployments = yaml.safe_load((ROOT / "flows" / "prefect.yaml").read_text())["deployments"]
    for deployment in deployments:
        env = deployment["work_pool"]["job_variables"]["env"]
        assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_S), deployment["name"]


def heartbeats(client, flow_run_id) -> list:
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    page = client.read_events(
        EventFilter(
            event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
        ),
        limit=50,
    )
    return sorted(e.occurred for e in page.events)


@pytest.mark.slow
def test_a_killed_flow_runs_process_is_marked_crashed_in_the_documented_time(
    mnist_root, migrated_database, tmp_path
):
    """The run beats twice (30 s apart: the command line's setting, not Prefect's 180 s
    default), is killed, and is Crashed at most SILENCE_S + EVALUATED_S after its last
    heartbeat, so at most that long after its death."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **DETERMINISTIC_ENV,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{migrated_database}",
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    for name in ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY"):
        env.pop(name, None)  # the command line's own setting
    server = Server(port, env, tmp_path / "server.log")
    train = None
    try:
        server.start()
        created = subprocess.run(
            [sys.executable, "-m", "prefect", "automation", "create", "--from-file"]
            + [str(AUTOMATIONS)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        run = tmp_path / "runs" / "killed"
        with (tmp_path / "train.log").open("w") as out:
            train = subprocess.Popen(
                [sys.executable, "-m", "gpucnn.flows.train", "--run-name", "killed"]
                + ["--limit", "3000", "--epochs", "1000", "--patience", "1000"]  # until killed
                + ["--device", "cpu"]
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
            time.sleep(0.2)
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            (flow_run,) = [  # the database copied holds the session's earlier runs too
                r
                for r in client.read_flow_runs(limit=200)
                if r.parameters.get("output_dir") == str(tmp_path / "runs")
            ]
            assert flow_run.state.is_running(), flow_run.state
            beats = heartbeats(client, flow_run.id)
            while len(beats) < 2:  # the second: HEARTBEAT_S after the first
                assert train.poll() is None, output()
                assert time.monotonic() < deadline, output()
                time.sleep(1)
                beats = heartbeats(client, flow_run.id)
            os.kill(train.pid, signal.SIGKILL)
            killed = time.monotonic()
            assert train.wait(timeout=10) == -signal.SIGKILL
            apart = (beats[1] - beats[0]).total_seconds()
            assert HEARTBEAT_S - 5 < apart < HEARTBEAT_S + 10, beats
            limit = SILENCE_S + EVALUATED_S + 10  # 10 s: a busy 2-core machine
            while (state := client.read_flow_run(flow_run.id).state).is_running():
                assert time.monotonic() - killed < limit, f"still Running {limit} s after"
                time.sleep(1)
            took = time.monotonic() - killed
    finally:
        if train is not None and train.poll() is None:
            train.kill()
        server.stop()
    assert state.is_crashed(), state
    assert state.message.startswith("No heartbeat for 90 s"), state.message
    print(f"Crashed {took:.0f} s after the kill")  # shown with -s
