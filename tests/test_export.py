"""gpucnn.export.onnx: the exported graph, run by onnxruntime, computes gpucnn's logits (or,
with preprocessing, its probabilities from uint8 pixels), and the file says how to feed it."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gpucnn
from gpucnn import data, models, nn
from gpucnn.export import UnsupportedLayerError
from gpucnn.train.checkpoint import save_checkpoint

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def randomise(model, seed=0):
    """Weights of the scale that keeps activations O(1) (so every layer matters to the
    logits), and BatchNorm running statistics and affine parameters far from 0 and 1."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        fan_in = int(np.prod(p.shape[1:])) if len(p.shape) > 1 else 1
        p.data[...] = rng.normal(0, 1 / np.sqrt(fan_in), p.shape)
    for _, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.shape)
            m.running_mean[...] = rng.normal(0, 0.5, m.running_mean.shape)
            m.running_var[...] = rng.uniform(0.3, 3.0, m.running_var.shape)
    return model.eval()


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return session.run(["logits"], {name: x})[0]


def assert_same_logits(got, want, rtol=1e-4):
    scale = float(np.abs(want).max())
    assert scale > 0.1, "logits too small for the comparison to mean anything"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("name", ["seed", "seed-bn", "lenet5", "vgg", "resnet", "resnet18"])
def test_each_model_family_runs_the_same_in_onnxruntime(tmp_path, name):
    model = randomise(models.build(name, seed=0))
    path = gpucnn.export.onnx(model, tmp_path / f"{name}.onnx")
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    x = np.random.default_rng(1).normal(size=(5, 1, 28, 28)).astype(np.float32)
    want = model(x)
    assert_same_logits(run_onnx(path, x), want)
    assert_same_logits(run_onnx(path, x[:1]), want[:1])  # the batch axis is dynamic


def test_batchnorm_export_uses_the_running_statistics_in_training_mode_too(tmp_path):
    model = randomise(models.build("seed-bn", seed=0))
    x = np.random.default_rng(2).normal(size=(3, 1, 28, 28)).astype(np.float32)
    want = model(x)
    model.train()  # export is of the eval-mode network, whatever mode the model is in
    path = gpucnn.export.onnx(model, tmp_path / "m.onnx")
    assert_same_logits(run_onnx(path, x), want)


def test_every_layer_option(tmp_path):
    """Strides, paddings int / "same" / "valid", pooling with padding (AvgPool2d counts the
    padded zeros), convolutions and linears without bias, Tanh, GlobalMaxPool2d, a residual
    with an identity shortcut and one with a projection."""
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, stride=2, padding=1),  # (6, 14, 14)
        nn.Tanh(),
        nn.AvgPool2d(3, stride=2, padding=1),  # (6, 7, 7)
        nn.Conv2d(6, 8, 3, padding="same", bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())),
        nn.Residual(
            nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.Dropout(0.3)),
            nn.Conv2d(8, 12, 1, stride=2),
        ),  # (12, 4, 4)
        nn.MaxPool2d(3, stride=1, padding=1),
        nn.Conv2d(12, 12, 2, padding="valid"),  # (12, 3, 3)
        nn.GlobalMaxPool2d(),
        nn.Linear(12, 7, bias=False),
    )
    randomise(model, seed=3)
    x = np.random.default_rng(4).normal(size=(4, 1, 28, 28)).astype(np.float32)
    path = gpucnn.export.onnx(model, tmp_path / "all.onnx")
    assert_same_logits(run_onnx(path, x), model(x))


def test_a_predictor_is_exported_with_its_input_shape(tmp_path):
    model = randomise(models.build("lenet5", seed=0))
    ck = save_checkpoint(tmp_path / "ck.npz", model, config={"model": "lenet5", "dataset": "mnist"})
    predictor = gpucnn.load(ck)
    path = gpucnn.export.onnx(predictor, tmp_path / "p.onnx")
    images = np.random.default_rng(5).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    got = run_onnx(path, predictor.normalise(images))
    assert_same_logits(got, predictor.logits(images))
    graph = onnx.load(str(path)).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [1, 28, 28]


def test_unsupported_layers_are_named(tmp_path):
    class Swish(nn.Module):
        def forward(self, x):
            return x / (1 + np.exp(-x))

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), Swish()))
    with pytest.raises(UnsupportedLayerError, match=r"'1\.1' of type Swish"):
        gpucnn.export.onnx(model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_an_input_shape_that_does_not_fit_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Linear"):
        gpucnn.export.onnx(models.build("seed"), tmp_path / "x.onnx", input_shape=(1, 32, 32))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        gpucnn.export.onnx(models.build("seed"), tmp_path / "x.onnx", input_shape=(28, 28))


@pytest.fixture(scope="module")
def mnist_run(mnist_root, tmp_path_factory):
    """(checkpoint, test images, test labels): a seed-bn network trained briefly on real MNIST
    (so its BatchNorm statistics are those of real digits), and 500 real test digits."""
    from gpucnn import optim
    from gpucnn.train import Trainer

    spec = data.get_spec("mnist")
    x, y = data.load("mnist", "train", root=mnist_root, download=False)
    xt, yt = data.load("mnist", "test", root=mnist_root, download=False)
    model = models.build("seed-bn", seed=0)
    trainer = Trainer(
        model, nn.CrossEntropyLoss(), optim.Adam(model.parameters()), progress=False, workers=1
    )
    loader = data.DataLoader(x[:3000], y[:3000], 30, seed=0, mean=spec.mean, std=spec.std)
    trainer.fit(loader, epochs=1)
    folder = tmp_path_factory.mktemp("mnist-run")
    ck = save_checkpoint(folder / "ck.npz", model, config={"model": "seed-bn", "dataset": "mnist"})
    return ck, xt[:500], yt[:500]


def test_real_mnist_digits_classify_the_same_in_onnxruntime(tmp_path, mnist_run):
    """The plain graph gives gpucnn's logits and classes in onnxruntime on real test digits."""
    ck, images, labels = mnist_run
    predictor = gpucnn.load(ck)
    path = gpucnn.export.onnx(predictor, tmp_path / "mnist.onnx")
    got = run_onnx(path, predictor.normalise(images))
    assert_same_logits(got, predictor.logits(images))
    np.testing.assert_array_equal(got.argmax(axis=1), predictor.predict(images))
    assert (got.argmax(axis=1) == labels).mean() > 0.8  # it learned digits, not noise


def metadata(path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.get_modelmeta().custom_metadata_map, onnx.load(str(path)).doc_string


@pytest.mark.parametrize("layout", ["NHW", "NCHW"])
def test_with_preprocessing_real_pixels_give_predict_proba(tmp_path, mnist_run, layout):
    """uint8 digits straight from the dataset, (N, 28, 28) or (N, 1, 28, 28), in; the
    Predictor's probabilities out."""
    ck, images, labels = mnist_run
    predictor = gpucnn.load(ck)
    path = gpucnn.export.onnx(predictor, tmp_path / "p.onnx", preprocessing=True, layout=layout)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (feed,) = session.get_inputs()
    assert (feed.name, feed.type) == ("pixels", "tensor(uint8)")
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    pixels = images if layout == "NHW" else images[:, None]
    assert feed.shape == ["N", *pixels.shape[1:]]
    (probs,) = session.run(None, {"pixels": pixels})
    want = predictor.predict_proba(images)
    np.testing.assert_allclose(probs, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(probs.argmax(axis=1), predictor.predict(images))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (probs.argmax(axis=1) == labels).mean() > 0.8
    meta, doc = metadata(path)
    assert meta["preprocessing"] == "in the graph"
    assert (
        meta["input"]
        == f"pixels: uint8 (N, {', '.join(map(str, pixels.shape[1:]))}), values 0..255"
    )
    assert meta["output"].startswith("probabilities: float32 (N, 10)")
    assert "0.1307" in doc and "0.3081" in doc and "The graph normalises them" in doc
    other = images[:, None] if layout == "NHW" else images  # the other layout: refused by name
    with pytest.raises(Exception, match="Invalid rank for input: pixels"):
        session.run(None, {"pixels": other})


def test_the_model_says_how_to_feed_it(tmp_path):
    """metadata_props and doc_string: layout, normalisation (the checkpoint's dataset's), class
    names and gpucnn's version."""
    model = randomise(models.build("lenet5", seed=0))
    ck = save_checkpoint(tmp_path / "ck.npz", model, config={"model": "lenet5", "dataset": "mnist"})
    predictor = gpucnn.load(ck)
    meta, doc = metadata(gpucnn.export.onnx(predictor, tmp_path / "m.onnx"))
    spec = data.get_spec("mnist")
    assert meta["input"] == "input: float32 (N, 1, 28, 28), normalised images"
    assert meta["input_layout"] == "NCHW: batch, channel, height, width"
    assert meta["output"] == "logits: float32 (N, 10); apply a softmax for probabilities"
    assert float(meta["mean"]) == spec.mean == 0.1307 and float(meta["std"]) == spec.std
    assert meta["normalisation"] == "(pixels / 255 - mean) / std, applied before the graph"
    assert json.loads(meta["classes"]) == list(spec.classes)
    assert meta["gpucnn_version"] == gpucnn.__version__
    assert (meta["model"], meta["dataset"], meta["preprocessing"]) == (
        "lenet5",
        "mnist",
        "not in the graph",
    )
    assert doc.splitlines() == [
        f"A gpucnn lenet5 model trained on mnist (gpucnn {gpucnn.__version__}, ONNX opset 17).",
        "Input input: float32 (N, 1, 28, 28), normalised images.",
        "Normalise them first: x = (pixels / 255 - mean) / std with mean 0.1307, std 0.3081.",
        "Output logits: float32 (N, 10); apply a softmax for probabilities.",
        "Classes, output index 0..9: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9.",
    ]
    # a bare module knows no normalisation or classes, and says so; given them, records them
    meta, _ = metadata(gpucnn.export.onnx(model, tmp_path / "bare.onnx"))
    assert meta["normalisation"] == "unknown (export a Predictor)"
    assert "mean" not in meta and "classes" not in meta
    named = list("abcdefghij")
    path = gpucnn.export.onnx(model, tmp_path / "given.onnx", classes=named, mean=0.5, std=0.25)
    meta, _ = metadata(path)
    assert (json.loads(meta["classes"]), meta["mean"], meta["std"]) == (named, "0.5", "0.25")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"preprocessing": True}, r"preprocessing=True needs the normalisation"),
        (
            {"preprocessing": True, "mean": 0.1, "std": 0.3, "layout": "NWHC"},
            r"'NHW', 'NHWC' or 'NCHW'",
        ),
        ({"layout": "NHW"}, r"it needs preprocessing=True"),
        ({"mean": 0.1}, r"give both mean and std"),
        ({"classes": ["a", "b"]}, r"2 class names for a model whose output is \(10,\)"),
    ],
)
def test_what_cannot_describe_the_model_is_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gpucnn.export.onnx(models.build("seed"), tmp_path / "x.onnx", **kwargs)
    assert not (tmp_path / "x.onnx").exists()


def test_three_channel_pixels_come_channels_last_or_nchw_normalised_per_channel(tmp_path):
    model = randomise(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GlobalAvgPool2d(), nn.Linear(4, 2)))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    common = {"input_shape": (3, 8, 8), "preprocessing": True, "mean": mean, "std": std}
    with pytest.raises(ValueError, match=r"layout must be 'NHWC' or 'NCHW' \(it takes more"):
        gpucnn.export.onnx(model, tmp_path / "x.onnx", layout="NHW", **common)
    pixels = np.random.default_rng(6).integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    m, s = np.array(mean, np.float32)[:, None, None], np.array(std, np.float32)[:, None, None]
    z = model((pixels.astype(np.float32) / 255 - m) / s)
    want = np.exp(z - z.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    for layout, feed in ((None, pixels.transpose(0, 2, 3, 1)), ("NCHW", pixels)):
        path = gpucnn.export.onnx(model, tmp_path / f"rgb-{layout}.onnx", layout=layout, **common)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (probs,) = session.run(None, {"pixels": np.ascontiguousarray(feed)})
        np.testing.assert_allclose(probs, want, rtol=1e-4)
        meta, _ = metadata(path)
        assert json.loads(meta["mean"]) == list(mean) and meta["channels"] == "3"
        assert meta["image_size"] == "8x8"
    assert session.get_inputs()[0].shape == ["N", 3, 8, 8]


def test_the_evaluate_command_takes_with_preprocessing_only_with_an_export(capsys):
    from gpucnn.flows import evaluate

    with pytest.raises(SystemExit) as stop:
        evaluate.main(["ck.npz", "--with-preprocessing"])
    assert stop.value.code == 2
    assert "--with-preprocessing shapes the ONNX export: give --export-onnx PATH" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    assert "--with-preprocessing" in capsys.readouterr().out
