"""python -m gpucnn.flows.evaluate as a user runs it: no Prefect unless asked, the run's own
results left alone unless asked, every file it wrote said after its logs, a folder in use
refused at once."""

from __future__ import annotations

import json

import pytest

from gpucnn import models
from gpucnn.train.checkpoint import save_checkpoint
from gpucnn.train.config import TrainConfig
from tests.flows.commands import command

RUNS_OWN = '{"the run\'s own": "metrics"}'
PLOTS = {"confusion_matrix", "predictions", "feature_maps"}  # no history.json: no curves


@pytest.fixture
def run_folder(tmp_path):
    """A run folder whose best checkpoint is an untrained LeNet-5 for MNIST, beside the run's
    own metrics.json."""
    run = tmp_path / "runs" / "r"
    config = TrainConfig(model="lenet5", device="cpu").to_dict()
    save_checkpoint(run / "checkpoints" / "best.npz", models.build("lenet5", seed=0), config=config)
    (run / "metrics.json").write_text(RUNS_OWN)
    return run


def said_last(stderr: str) -> list[str]:
    """The files the command says it wrote; they must be its last lines, after its logs."""
    lines = stderr.strip().splitlines()
    said = [line for line in lines if line.startswith("wrote ")]
    assert said and lines[-len(said) :] == said, stderr
    return sorted(line.removeprefix("wrote ") for line in said)


def test_evaluate_writes_files_named_after_the_checkpoint_without_prefect(
    run_folder, mnist_root, tmp_path
):
    pytest.importorskip("onnx")
    pytest.importorskip("matplotlib")
    best = run_folder / "checkpoints" / "best.npz"
    onnx_path = tmp_path / "model.onnx"
    out = command("gpucnn.flows.evaluate", best, "--data-dir", mnist_root, "--export-onnx",
                  onnx_path, tmp_path=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "prefect" not in out.imported  # no Prefect server: nothing asked for one
    assert (run_folder / "metrics.json").read_text() == RUNS_OWN  # the run's own, untouched
    assert not (run_folder / "plots").exists()
    metrics = json.loads((run_folder / "metrics-best.json").read_text())
    assert metrics["samples"] == 10000 and metrics["checkpoint"] == str(best)
    plots = sorted((run_folder / "plots-best").glob("*.png"))
    assert {p.stem for p in plots} == PLOTS and sorted(metrics["plots"]) == [str(p) for p in plots]
    files = [run_folder / "metrics-best.json", *plots, onnx_path]
    assert said_last(out.stderr) == sorted(str(p) for p in files)
    result = json.loads(out.stdout)
    assert result["accuracy"] == metrics["accuracy"] and result["samples"] == 10000
    assert sorted(result["files"]) == sorted(str(p) for p in files)
    assert not (run_folder / ".lock").exists() and not (tmp_path / "prefect-home").exists()


@pytest.mark.slow
def test_evaluate_as_a_flow_updates_the_run_when_asked(
    run_folder, mnist_root, migrated_database, tmp_path
):
    pytest.importorskip("matplotlib")
    best = run_folder / "checkpoints" / "best.npz"
    database = {"PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{migrated_database}"}
    out = command("gpucnn.flows.evaluate", best, "--data-dir", mnist_root, "--prefect",
                  "--update-run", tmp_path=tmp_path, env=database)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "prefect" in out.imported and "Flow run" in out.stderr
    assert "Finished in state Completed()" in out.stderr
    metrics = json.loads((run_folder / "metrics.json").read_text())  # the run's, rewritten
    assert metrics["samples"] == 10000 and metrics["checkpoint"] == str(best)
    plots = sorted((run_folder / "plots").glob("*.png"))
    assert {p.stem for p in plots} == PLOTS
    assert said_last(out.stderr) == sorted(str(p) for p in [run_folder / "metrics.json", *plots])
    assert not list(run_folder.glob("metrics-*.json")) and not (run_folder / ".lock").exists()


def test_evaluate_on_a_folder_in_use_fails_at_once_naming_the_output_dir(run_folder, tmp_path):
    from tests.processes import folder_held_elsewhere

    with folder_held_elsewhere(run_folder) as holder:
        out = command("gpucnn.flows.evaluate", run_folder / "checkpoints" / "best.npz",
                      tmp_path=tmp_path)  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: RunFolderError: run folder {run_folder} is in use by process {holder.pid} on "
        )
    )
    assert out.stderr.strip().endswith("or choose another --output-dir"), out.stderr
    assert "prefect" not in out.imported


@pytest.mark.parametrize(
    "args, message",
    [
        (["--with-preprocessing"], "--with-preprocessing shapes the ONNX export"),
        (["--update-run", "--output-dir", "elsewhere"], "--update-run rewrites the run's own"),
    ],
)
def test_evaluate_usage_errors_exit_2(run_folder, tmp_path, args, message):
    out = command("gpucnn.flows.evaluate", run_folder / "checkpoints" / "best.npz", *args,
                  tmp_path=tmp_path)  # fmt: skip
    assert out.returncode == 2 and message in out.stderr, out.stderr
