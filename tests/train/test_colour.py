"""A user's folder of colour images through the whole pipeline, in process: train, evaluate,
plots, gpucnn.load, predict on the image files, ONNX with preprocessing in onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gpucnn
from gpucnn import data, models
from gpucnn.train import recipe
from gpucnn.train.checkpoint import save_checkpoint
from gpucnn.train.config import TrainConfig
from tests.data.imagefolders import CLASSES, write_digits

pytest.importorskip("PIL", reason="image folders need Pillow (the 'images' extra)")


@pytest.fixture(scope="module")
def colour_run(mnist_root, tmp_path_factory):
    """A seed model trained for 3 epochs on 400 real MNIST test digits written as tinted PNG
    and JPEG files of mixed sizes (the split: per class, 20% test, 20% validation)."""
    tmp = tmp_path_factory.mktemp("colour")
    x, y = data.load("mnist", "test", root=mnist_root, download=False)
    write_digits(tmp / "photos", x[:400], y[:400], colour=True, mixed=True)
    config = TrainConfig(
        dataset=str(tmp / "photos"), data_dir=str(tmp / "cache"), epochs=3, batch_size=32,
        device="cpu", seed=0,
    )  # fmt: skip
    summary = recipe.train(config, tmp / "run", progress=False)
    metrics = recipe.evaluate_run(config, tmp / "run", summary["best_checkpoint"])
    return config, tmp, summary, metrics


def test_a_colour_folder_trains_to_an_accuracy_threshold(colour_run):
    config, tmp, summary, metrics = colour_run
    assert 70 <= metrics["samples"] <= 90 and metrics["classes"] == CLASSES  # 20% per class
    assert metrics["accuracy"] >= 0.8  # colour tells the classes apart; the pipeline keeps it
    saved = json.loads((tmp / "run" / "config.json").read_text())
    assert saved["data"]["shape"] == [3, 28, 28] and saved["data"]["classes"] == CLASSES
    assert len(saved["data"]["normalization"]["mean"]) == 3
    assert {p.name for p in (tmp / "run" / "plots").iterdir()} >= {
        "predictions.png", "confusion_matrix.png", "feature_maps.png", "curves.png"
    }  # fmt: skip


def test_data_json_records_the_split_the_files_and_the_normalisation(colour_run):
    config, tmp, _, _ = colour_run
    info = recipe.split_info(config)
    counts = info["counts"]
    assert sum(counts.values()) == 400 and 70 <= counts["val"] <= 90 <= counts["train"]
    assert sum(len(v) for v in info["files"].values()) == 400
    assert not set(info["files"]["train"]) & set(info["files"]["test"])
    assert info["split"] == "per class, test held out" and len(info["normalisation"]["std"]) == 3
    assert info["classes"] == CLASSES and info["image_shape"] == [3, 28, 28]
    assert info["prepare"]["channels"] == 3


def test_load_and_predict_on_the_files_prepare_them_as_training_did(colour_run):
    config, tmp, summary, _ = colour_run
    model = gpucnn.load(summary["best_checkpoint"])
    assert model.input_shape == (3, 28, 28) and model.classes == tuple(CLASSES)
    run = recipe.load_data(config)
    test = run.parts["test"]
    files = [str(tmp / "photos" / run.dataset.facts["paths"][r]) for r in test.rows()]
    from_files = model.predict_proba(files)
    from_cache = model.predict_proba(test.images[test.rows()])
    np.testing.assert_array_equal(from_files, from_cache)  # the same pixels, the same rule
    from gpucnn.predict import predict_files

    (first,) = predict_files(summary["best_checkpoint"], files[:1])
    assert first["class"] == CLASSES[int(from_files[0].argmax())]


def test_onnx_takes_colour_pixels_channels_last(colour_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    config, tmp, summary, _ = colour_run
    model = gpucnn.load(summary["best_checkpoint"])
    path = gpucnn.export.onnx(model, tmp_path / "m.onnx", preprocessing=True)
    test = recipe.load_data(config).parts["test"]
    pixels = np.asarray(test.images[test.rows()[:16]])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {"pixels": pixels.transpose(0, 2, 3, 1).copy()})
    np.testing.assert_allclose(probs, model.predict_proba(pixels), rtol=1e-4, atol=1e-6)
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == CLASSES and meta["channels"] == "3"
    assert json.loads(meta["mean"]) == list(model.normalization.mean)


def test_a_checkpoint_from_before_per_channel_data_still_loads(tmp_path):
    model = models.build("seed", seed=0)
    path = save_checkpoint(
        tmp_path / "old.npz", model, config={"model": "seed", "dataset": "mnist"}
    )
    p = gpucnn.load(path)
    assert (p.mean, p.std, p.input_shape) == (0.1307, 0.3081, (1, 28, 28))
    digits = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(p.predict(digits), p.predict(digits[:, None]))


def test_models_size_their_classifier_from_the_image():
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    for name in ("seed", "seed-bn", "lenet5", "vgg"):
        model = models.build(name, num_classes=5, in_channels=3, seed=0, input_size=64)
        assert model.eval()(x).shape == (2, 5)
    with pytest.raises(ValueError, match="lenet5: an input of 8x8 pixels is too small"):
        models.build("lenet5", input_size=8)
