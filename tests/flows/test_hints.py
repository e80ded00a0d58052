"""A refusal's way out is said as the user gives it: a flow's parameters (``overwrite=true``,
``run_name=...``) to a deployment's or a script's flow run, the flags (``--overwrite``,
``--run-name``) on the command line, also when the refusal comes from inside the flow. The
holder of a folder in use is named as the user knows it: the flow run holding it, by name and
id. A refused flow run ends Failed with the refusal as its message, and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpucnn.train.atomic import write_json
from gpucnn.train.config import TrainConfig
from gpucnn.train.errors import CheckpointError
from gpucnn.train.runs import RunFolderError

pytestmark = pytest.mark.usefixtures("prefect_api")

QUICK = {"limit": 200, "epochs": 1, "device": "cpu"}


def test_ways_out_are_flags_unless_a_flow_says_otherwise():
    from gpucnn.train.runs import start_over, way_out, ways_out

    assert way_out("overwrite") == "--overwrite" and "--overwrite" in start_over()
    with ways_out("flow parameters"):
        assert start_over() == "to start over, re-run with overwrite=true (or delete the folder)"
        assert way_out("run_name") == "run_name=..."
        with ways_out("command line", keep_said=True):  # what a caller said stays
            assert way_out("overwrite") == "overwrite=true"
    assert way_out("run_name") == "--run-name"
    with pytest.raises(ValueError, match="where must be one of"):
        with ways_out("a web form"):
            pass


def assert_parameters_named(message: str) -> None:
    assert "overwrite=true" in message, message
    assert "--overwrite" not in message and "--run-name" not in message, message


def test_a_flow_run_refusing_another_config_names_the_parameters(tmp_path):
    from gpucnn.flows.pipeline import train_flow

    write_json(tmp_path / "runs" / "r" / "config.json", TrainConfig(**QUICK, lr=0.05).to_dict())
    with pytest.raises(RunFolderError) as caught:
        train_flow(config=QUICK, output_dir=str(tmp_path / "runs"), run_name="r")
    assert "lr 0.05 there, 0.001 now" in str(caught.value)
    assert_parameters_named(str(caught.value))
    assert "choose another run_name=..." in str(caught.value)


def test_a_flow_run_on_a_folder_in_use_names_the_run_name_parameter(tmp_path):
    from gpucnn.flows.pipeline import train_flow
    from tests.processes import folder_held_elsewhere

    with folder_held_elsewhere(tmp_path / "runs" / "r") as holder:
        with pytest.raises(RunFolderError) as caught:
            train_flow(config=QUICK, output_dir=str(tmp_path / "runs"), run_name="r")
    message = str(caught.value)
    assert f"in use by process {holder.pid}" in message
    assert message.endswith("or choose another run_name=..."), message


# Holds a run folder as the command line does: the process claims it, then its flow run
# claims it again inside; prints the flow run's name and id, and holds until stdin closes
FLOW_HOLDER = """
import sys
from prefect import flow
from prefect.runtime import flow_run
from gpucnn.flows.pipeline import flow_run_scope
from gpucnn.train.runs import RunFolder

@flow(name="gpucnn-holder")
def hold(path):
    with flow_run_scope(), RunFolder(path).claim():
        print(flow_run.get_name(), flow_run.get_id(), flush=True)
        sys.stdin.read()

with RunFolder(sys.argv[1]).claim():
    hold(sys.argv[1])
"""


def test_a_folder_held_by_a_flow_run_is_refused_naming_it_without_a_traceback(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL

    from gpucnn.flows.pipeline import train_flow
    from tests.flows.test_reporting import flow_run_logs

    folder = tmp_path / "runs" / "r"
    holder = subprocess.Popen(
        [sys.executable, "-c", FLOW_HOLDER, str(folder)],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        name, run_id = holder.stdout.readline().split()
        state = train_flow(
            config=QUICK, output_dir=str(tmp_path / "runs"), run_name="r", return_state=True
        )
    finally:
        holder.kill()
        holder.wait()
    assert state.is_failed(), state
    assert state.message.startswith(
        f"RunFolderError: run folder {folder} is in use by flow run '{name}' ({run_id}) in "
        f"process {holder.pid} on "
    ), state.message
    assert state.message.endswith("or choose another run_name=..."), state.message
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(state.state_details.flow_run_id).state
    assert stored.is_failed() and stored.message == state.message
    APILogWorker.drain_all(timeout=10)  # what Prefect's own handler sent, if anything
    logs = "\n".join(flow_run_logs(state.state_details.flow_run_id))
    assert "Traceback" not in logs and "Encountered exception" not in logs, logs
    with pytest.raises(RunFolderError, match="is in use by flow run"):  # as a Python call
        state.result()


@pytest.fixture
def unusable_checkpoint(mnist_mirror, tmp_path):
    """A run folder of QUICK's config whose only checkpoint is not one: resuming it is refused
    from inside the training task."""
    config = {**QUICK, "data_dir": str(tmp_path / "data"), "mirrors": [mnist_mirror[0]]}
    run = tmp_path / "runs" / "r"
    write_json(run / "config.json", TrainConfig(**config).to_dict())
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.npz").write_bytes(b"not a checkpoint")
    return config


def test_a_refusal_from_inside_the_training_task_names_the_parameter(unusable_checkpoint, tmp_path):
    from gpucnn.flows.pipeline import train_flow

    with pytest.raises(CheckpointError, match="no usable checkpoint") as caught:
        train_flow(config=unusable_checkpoint, output_dir=str(tmp_path / "runs"), run_name="r")
    assert_parameters_named(str(caught.value))


def test_the_command_line_calling_the_flow_keeps_its_flags(unusable_checkpoint, tmp_path):
    """gpucnn.cli.run.run_cli says "command line" around the flow it calls."""
    from gpucnn.flows.pipeline import train_flow
    from gpucnn.train.runs import ways_out

    with ways_out("command line"):
        with pytest.raises(CheckpointError) as caught:
            train_flow(config=unusable_checkpoint, output_dir=str(tmp_path / "runs"), run_name="r")
    assert "re-run with --overwrite" in str(caught.value)
    assert "overwrite=true" not in str(caught.value)


def test_evaluate_and_sweep_flows_on_a_folder_in_use_name_the_output_dir(tmp_path):
    """Neither flow has a run_name parameter: the way out is another output_dir."""
    from gpucnn import models
    from gpucnn.flows.pipeline import evaluate_flow, sweep_flow, trial_name
    from gpucnn.train.checkpoint import save_checkpoint
    from tests.processes import folder_held_elsewhere

    run = tmp_path / "runs" / "r"
    best = save_checkpoint(run / "checkpoints" / "best.npz", models.build("lenet5", seed=0),
                           config=TrainConfig(**QUICK, model="lenet5").to_dict())  # fmt: skip
    trial = tmp_path / "sweep" / trial_name({"lr": 0.001}, TrainConfig(**QUICK))
    with folder_held_elsewhere(run), folder_held_elsewhere(trial):
        for refused in (
            lambda: evaluate_flow(str(best)),
            lambda: sweep_flow(
                grid={"lr": [0.001]}, base=QUICK, output_dir=str(tmp_path / "sweep")
            ),
        ):
            with pytest.raises(RunFolderError) as caught:
                refused()
            message = str(caught.value)
            assert " is in use by process " in message, message
            assert message.endswith("or choose another output_dir=..."), message
