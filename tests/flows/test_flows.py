"""The flows against Prefect's local API: the whole pipeline on real MNIST (a subset), the
download task's retries, resume after a crash, artifacts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gpucnn import data
from tests.data.conftest import TinyDataset
from tests.data.server import ScriptedServer

pytestmark = pytest.mark.usefixtures("prefect_api")

QUICK = {"limit": 1500, "epochs": 2, "batch_size": 64, "device": "cpu"}


@pytest.fixture
def quick(mnist_mirror, tmp_path):
    return {**QUICK, "data_dir": str(tmp_path / "data"), "mirrors": [mnist_mirror[0]]}


@pytest.mark.slow
def test_train_flow_leaves_a_complete_run_folder(quick, tmp_path):
    from prefect.client.orchestration import get_client

    from gpucnn.flows.pipeline import train_flow

    result = train_flow(config=quick, output_dir=str(tmp_path / "runs"))
    run = tmp_path / "runs" / result["run_dir"].split("/")[-1]
    for name in (
        "config.json",
        "data.json",
        "history.json",
        "metrics.json",
        "summary.json",
        "checkpoints/best.npz",
        "checkpoints/last.npz",
    ):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    # --limit shrinks the training data only: the test set is whole
    assert metrics["samples"] == 10000 and 0.5 < metrics["accuracy"] <= 1.0
    assert np.array(metrics["confusion_matrix"]).sum() == 10000
    info = json.loads((run / "data.json").read_text())
    assert info["counts"] == {"train": 1200, "val": 300, "test": 10000}
    history = json.loads((run / "history.json").read_text())
    assert history["epoch"] == [1, 2]
    pytest.importorskip("matplotlib")
    for png in ("curves", "confusion_matrix", "predictions", "feature_maps"):
        assert (run / "plots" / f"{png}.png").stat().st_size > 1000
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    assert {"table", "markdown", "progress"} <= {a.type for a in artifacts}
    name = run.name.lower()
    assert {f"{name}-summary", f"{name}-per-class-accuracy", f"{name}-progress"} <= {
        a.key for a in artifacts
    }
    assert (run / "history.csv").read_text().splitlines()[0].startswith("epoch,train_loss")
    # a tidy folder: no lock once its run ended, one file mode (the umask's) for every file
    assert not (run / ".lock").exists()
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {p.relative_to(run): oct(p.stat().st_mode & 0o777) for p in run.rglob("*")
             if p.is_file()}  # fmt: skip
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
    assert "INFO    gpucnn.train: training on cpu" in (run / "log.txt").read_text()

    # the same config again: the finished run is reported, not trained or evaluated again
    def stamps_of(folder):  # every result file (the .lock is the run's owner's, not a result)
        return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.name != ".lock"}

    stamps = stamps_of(run)
    again = train_flow(config=quick, output_dir=str(tmp_path / "runs"))
    assert again["run_dir"] == result["run_dir"] and again["already_finished"]
    assert again["test"]["accuracy"] == metrics["accuracy"]
    assert stamps_of(run) == stamps


@pytest.mark.slow
def test_a_crashed_run_resumes_from_its_last_checkpoint(quick, tmp_path):
    from gpucnn.flows.pipeline import train_flow

    out = str(tmp_path / "runs")
    train_flow(config={**quick, "epochs": 1}, output_dir=out, run_name="r")
    run = tmp_path / "runs" / "r"
    (run / "summary.json").unlink()  # as if the process died after epoch 1's checkpoint
    first = json.loads((run / "history.json").read_text())
    train_flow(config={**quick, "epochs": 2}, output_dir=out, run_name="r")
    history = json.loads((run / "history.json").read_text())
    assert history["epoch"] == [1, 2]
    assert history["train_loss"][0] == first["train_loss"][0]  # epoch 1 was not redone


def test_download_task_retries_a_server_that_fails_twice(tmp_path, monkeypatch):
    from prefect import flow

    from gpucnn.flows.tasks import download_dataset

    ds = TinyDataset("tinyflow")
    monkeypatch.setitem(data.DATASETS, "tinyflow", ds.spec)
    with ScriptedServer() as server:
        ds.serve_all(server, "/m")
        path = ds.path("train_labels", "/m")
        server.serve(path, ("status", 503), ("status", 502), ("ok", ds.gz["train_labels"]))

        @flow
        def fetch():
            return download_dataset("tinyflow", str(tmp_path), [server.url + "/m/"])

        paths = fetch()
        assert server.hits[path] == 3  # data.download retried the two 5xx itself
    _, labels = data.load("tinyflow", root=tmp_path, download=False)
    np.testing.assert_array_equal(labels, ds.arrays["train_labels"])
    assert set(paths) == set(ds.files)


def test_download_task_does_not_retry_a_checksum_failure(tmp_path, monkeypatch):
    from prefect import flow

    from gpucnn.flows.tasks import download_dataset

    ds = TinyDataset("tinybad")
    monkeypatch.setitem(data.DATASETS, "tinybad", ds.spec)
    with ScriptedServer() as server:
        ds.serve_all(server, "/m")
        path = ds.path("test_labels", "/m")
        server.serve(path, ("ok", ds.gz["train_labels"]))  # valid gzip, wrong file

        @flow
        def fetch():
            return download_dataset("tinybad", str(tmp_path), [server.url + "/m/"])

        with pytest.raises(data.DownloadError, match="checksum mismatch"):
            fetch()
        assert server.hits[path] == 1
