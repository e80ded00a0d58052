"""The sweep on a Dask cluster (the `dask` extra: prefect-dask, distributed): two trials on a
LocalCluster of two worker processes on loopback, through DaskTaskRunner in this process and
through the command line's --dask-address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("prefect_dask", reason="the Dask sweep needs the 'dask' extra")
distributed = pytest.importorskip("distributed", reason="the Dask sweep needs the 'dask' extra")

GRID = {"lr": [1e-3, 3e-4]}
QUICK = {"limit": 600, "epochs": 1, "device": "cpu"}


@pytest.fixture
def cluster():
    """(cluster, client): two single-threaded worker processes; the scheduler runs here."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        client.get_task_stream(count=1)  # the scheduler records its task stream from now on
        yield cluster, client


def assert_complete_sweep(out: Path, rows: list[dict]) -> None:
    """Two rows, one per lr; each trial's run folder finished; both rows in sweep.json."""
    assert sorted(r["lr"] for r in rows) == sorted(GRID["lr"])
    assert sorted(r["run"].split("-")[0] for r in rows) == ["lr=0.0003", "lr=0.001"]
    for row in rows:
        assert row["epochs"] == 1 and 0.1 < row["test_accuracy"] <= 1.0, row
        for f in ("summary.json", "metrics.json", "checkpoints/best.npz"):
            assert (out / row["run"] / f).exists(), f"{row['run']}/{f}"
    recorded = {r["run"]: r for r in json.loads((out / "sweep.json").read_text())}
    assert all(recorded[r["run"]] == r for r in rows)


def trial_pids(client) -> dict[str, int]:
    """{Dask key of each run_trial task that ran: the PID of the worker process it ran in}."""
    pids = client.run(os.getpid)
    stream = client.get_task_stream(count=100)
    return {t["key"]: pids[t["worker"]] for t in stream if "run_trial" in str(t["key"])}


def assert_one_trial_per_worker(client) -> None:
    ran_in = trial_pids(client)
    assert len(ran_in) == 2, ran_in
    assert os.getpid() not in ran_in.values(), ran_in  # not in this process's threads
    assert len(set(ran_in.values())) == 2, ran_in


def _child_commands() -> list[str]:
    import psutil

    return [" ".join(c.cmdline()) for c in psutil.Process().children(recursive=True)]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_sweep_runs_its_trials_on_the_dask_workers(cluster, mnist_root, mnist_mirror, tmp_path):
    from prefect_dask import DaskTaskRunner

    from gpucnn.flows.pipeline import sweep_flow
    from gpucnn.train.config import TrainConfig

    cluster, client = cluster
    out = tmp_path / "sweep"
    base = TrainConfig(**QUICK, data_dir=str(mnist_root), mirrors=[mnist_mirror[0]])
    runner = DaskTaskRunner(address=cluster.scheduler_address)
    rows = sweep_flow.with_options(task_runner=runner)(grid=GRID, base=base, output_dir=str(out))

    assert_complete_sweep(out, rows)
    assert_one_trial_per_worker(client)


@pytest.mark.slow
def test_sweep_command_line_with_a_dask_address(cluster, mnist_root, mnist_mirror, tmp_path):
    cluster, client = cluster
    out = tmp_path / "sweep"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)  # the command's own local API
    # fmt: off
    cmd = [
        sys.executable, "-m", "gpucnn.flows.sweep", "--grid", "lr=1e-3,3e-4", "--json",
        "--limit", "600", "--epochs", "1", "--device", "cpu",
        "--data-dir", str(mnist_root), "--mirror", mnist_mirror[0],
        "--output-dir", str(out), "--dask-address", cluster.scheduler_address,
    ]
    # fmt: on
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(proc.stdout[proc.stdout.index("[") :])

    assert_complete_sweep(out, rows)
    assert_one_trial_per_worker(client)
    # the trials reported to the command's API: no worker started a Prefect server of its own
    servers = {
        w: [c for c in cmds if "uvicorn" in c] for w, cmds in client.run(_child_commands).items()
    }
    assert not any(servers.values()), servers
