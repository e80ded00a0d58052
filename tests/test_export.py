"""gpucnn.export.onnx: the exported graph, run by onnxruntime, computes gpucnn's logits."""

from __future__ import annotations

import numpy as np
import pytest

import gpucnn
from gpucnn import models, nn
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


def test_real_mnist_digits_classify_the_same_in_onnxruntime(tmp_path, mnist_root):
    """A seed-bn network trained briefly on real MNIST (so its BatchNorm statistics are those
    of real digits) gives the same logits and classes in onnxruntime on real test digits."""
    from gpucnn import data, optim
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
    ck = save_checkpoint(
        tmp_path / "ck.npz", model, config={"model": "seed-bn", "dataset": "mnist"}
    )
    predictor = gpucnn.load(ck)
    path = gpucnn.export.onnx(predictor, tmp_path / "mnist.onnx")
    images, labels = xt[:500], yt[:500]
    got = run_onnx(path, predictor.normalise(images))
    assert_same_logits(got, predictor.logits(images))
    np.testing.assert_array_equal(got.argmax(axis=1), predictor.predict(images))
    assert (got.argmax(axis=1) == labels).mean() > 0.8  # it learned digits, not noise
