"""The command lines on a user's own folder of colour images, as a user runs them: train (the
Prefect flow), evaluate with an ONNX export, predict on image files; and the --data-dir trap."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.data.imagefolders import CLASSES, random_folder, write_digits
from tests.flows.commands import command

pytest.importorskip("PIL", reason="image folders need Pillow (the 'images' extra)")


@pytest.mark.slow
def test_a_folder_of_colour_photos_trains_evaluates_exports_and_predicts(mnist_root, tmp_path):
    pytest.importorskip("prefect")
    ort = pytest.importorskip("onnxruntime")
    from gpucnn import data

    x, y = data.load("mnist", "test", root=mnist_root, download=False)
    paths = write_digits(tmp_path / "photos", x[:300], y[:300], colour=True, mixed=True)
    common = ["--data-dir", tmp_path / "cache", "--output-dir", tmp_path / "runs"]
    out = command(
        "gpucnn.flows.train", "--dataset", tmp_path / "photos", "--epochs", "2",
        "--batch-size", "32", "--device", "cpu", *common, tmp_path=tmp_path, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["test_accuracy"] >= 0.7, result
    run = tmp_path / "runs" / result["run_dir"].rsplit("/", 1)[-1]
    assert run.name.startswith("photos-seed-")
    assert json.loads((run / "data.json").read_text())["classes"] == CLASSES
    assert (run / "plots" / "predictions.png").exists()
    best = run / "checkpoints" / "best.npz"
    onnx_path = tmp_path / "photos.onnx"
    out = command(
        "gpucnn.flows.evaluate", best, "--export-onnx", onnx_path, "--with-preprocessing",
        tmp_path=tmp_path, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[-1])["accuracy"] == result["test_accuracy"]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["N", 28, 28, 3]
    out = command("gpucnn.predict", "--checkpoint", best, *paths[:3], tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and all(line.split(": ")[1].split()[0] in CLASSES for line in lines)


def test_data_dir_over_class_folders_is_refused_before_anything_starts(tmp_path):
    photos = random_folder(tmp_path / "photos")
    out = command(
        "gpucnn.flows.train", "--data-dir", photos, "--output-dir", tmp_path / "runs",
        tmp_path=tmp_path, env={"GPUCNN_DATA_MIRROR": ""}, timeout=300,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert f"pass --dataset {photos}" in line and "holds class folders of images" in line
    assert not (photos / "mnist").exists() and np.all([p.is_dir() for p in photos.iterdir()])
