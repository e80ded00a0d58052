"""gpucnn.load + Predictor: a checkpoint in, class indices and probabilities out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpucnn
from gpucnn import models
from gpucnn.inference import NonFiniteOutputError, Predictor
from gpucnn.train.checkpoint import save_checkpoint
from gpucnn.train.errors import CheckpointError
from tests.helpers import rounding_tolerance

MEAN, STD = 0.1307, 0.3081  # MNIST's, which the run normalised with


def scaled_weights(model, seed=0):
    """Weights of the scale that makes logits O(1), so differences between inputs show."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        fan_in = int(np.prod(p.shape[1:])) if len(p.shape) > 1 else 1
        p.data[...] = rng.normal(0, 1 / np.sqrt(fan_in), p.shape)
    return model


def images(n, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


@pytest.fixture
def checkpoint(tmp_path):
    model = scaled_weights(models.build("seed", seed=0))
    return save_checkpoint(
        tmp_path / "best.npz", model, config={"model": "seed", "dataset": "mnist"}
    )


def reference_logits(path, x_uint8):
    """What the run's own recipe computes: the same weights, (x/255 - mean)/std, eval mode."""
    from gpucnn.train.checkpoint import load_checkpoint

    model = models.build("seed")
    model.load_state_dict(load_checkpoint(path).model_state())
    model.eval()
    x = ((x_uint8.astype(np.float32) / 255 - MEAN) / STD)[:, None].astype(np.float32)
    return model(x)


def test_load_then_predict(checkpoint):
    model = gpucnn.load(checkpoint)
    assert isinstance(model, Predictor)
    assert model.classes == tuple(str(d) for d in range(10))
    assert (model.mean, model.std) == (MEAN, STD)
    assert not model.module.training
    x = images(12)
    want = reference_logits(checkpoint, x)
    np.testing.assert_allclose(model.logits(x), want, rtol=1e-5, atol=1e-5)
    pred = model.predict(x)
    assert pred.dtype == np.int64 and pred.shape == (12,)
    np.testing.assert_array_equal(pred, want.argmax(axis=1))
    p = model.predict_proba(x)
    assert p.shape == (12, 10)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(p.argmax(axis=1), pred)


def test_pixels_are_normalised_exactly_as_the_training_loader_does(checkpoint):
    from gpucnn import data

    x = images(16)
    loader = data.DataLoader(x, np.zeros(16, np.int64), 16, shuffle=False, mean=MEAN, std=STD)
    (batch, _), *_ = list(loader)
    np.testing.assert_array_equal(gpucnn.load(checkpoint).normalise(x), batch)


def test_uint8_and_float_images_agree(checkpoint):
    model = gpucnn.load(checkpoint)
    x = images(9)
    p8 = model.predict_proba(x)
    np.testing.assert_allclose(model.predict_proba(x / 255.0), p8, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        model.predict_proba((x / 255).astype(np.float32)), p8, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(model.predict_proba(x.astype(np.int64)), p8, rtol=1e-6)


def test_every_accepted_layout_gives_the_same(checkpoint):
    model = gpucnn.load(checkpoint)
    x = images(3)
    want = model.logits(x)
    np.testing.assert_array_equal(model.logits(x[:, None]), want)
    np.testing.assert_array_equal(model.logits(x.tolist()), want)
    # (H, W): a batch of one (another GEMM shape: equal to rounding)
    np.testing.assert_allclose(model.logits(x[1]), want[1:2], rtol=1e-5, atol=1e-5)


def test_any_batch_size_is_processed_in_chunks(checkpoint):
    x = images(23)
    whole = gpucnn.load(checkpoint).logits(x)
    chunked = gpucnn.load(checkpoint, batch_size=5)
    calls = []
    forward = chunked.module.forward

    def counting_forward(batch):
        calls.append(len(batch))
        return forward(batch)

    chunked.module.forward = counting_forward
    # another batch size is another GEMM shape, which BLAS may block or vectorise differently:
    # the logits agree to float32 rounding of the longest product (fc1, K = 3136), per layer
    tol = 4 * rounding_tolerance(3136, float(np.abs(whole).max()))  # 4 layers of products
    np.testing.assert_allclose(chunked.logits(x), whole, rtol=0, atol=tol)
    assert calls == [5, 5, 5, 5, 3]
    assert chunked.predict(x[:0]).shape == (0,)
    assert chunked.predict_proba(x[:0]).shape == (0, 10)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (np.zeros((2, 32, 32), np.uint8), ["(2, 32, 32)", "(N, 1, 28, 28)", "28x28"]),
        (np.zeros((2, 3, 28, 28), np.uint8), ["(2, 3, 28, 28)", "(N, 1, 28, 28)"]),
        (np.zeros((1, 1, 1, 28, 28), np.uint8), ["(1, 1, 1, 28, 28)"]),
        (np.zeros(28, np.uint8), ["(28,)"]),
        (np.zeros((2, 28, 28), bool), ["dtype bool", "uint8"]),
        (np.zeros((2, 28, 28), complex), ["dtype complex128"]),
        (np.full((2, 28, 28), 2.0), ["[0, 1]", "255"]),
        (np.full((2, 28, 28), -0.5, np.float32), ["[0, 1]"]),
        (np.full((2, 28, 28), 300, np.int64), ["0..255", "300"]),
        (np.full((2, 28, 28), np.nan, np.float32), ["NaN"]),
    ],
)
def test_bad_images_are_refused_with_what_is_expected(checkpoint, bad, words):
    model = gpucnn.load(checkpoint)
    with pytest.raises(ValueError) as info:
        model.predict(bad)
    for w in words:
        assert w in str(info.value)


def test_non_finite_outputs_are_refused_not_reported():
    model = models.build("seed", seed=0)
    model[-1].bias.data[0] = np.nan
    p = Predictor(model, [str(d) for d in range(10)], MEAN, STD)
    with pytest.raises(NonFiniteOutputError, match="NaN or infinite"):
        p.predict(images(2))
    with pytest.raises(NonFiniteOutputError):
        p.predict_proba(images(2))


def test_predictor_checks_its_model_fits():
    with pytest.raises(ValueError, match="3 classes"):
        Predictor(models.build("seed"), ["a", "b", "c"], MEAN, STD)
    with pytest.raises(ValueError, match="expected a"):
        Predictor(models.build("seed"), [str(d) for d in range(10)], MEAN, STD, (1, 32, 32))


def test_a_checkpoint_without_a_model_name_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "ck.npz", scaled_weights(models.build("lenet5")))
    with pytest.raises(CheckpointError, match="names no model"):
        gpucnn.load(path)
    model = gpucnn.load(path, model="lenet5", dataset="mnist")
    assert model.predict(images(2)).shape == (2,)


def test_weights_of_another_model_are_refused(tmp_path):
    path = save_checkpoint(
        tmp_path / "ck.npz", models.build("seed"), config={"model": "lenet5", "dataset": "mnist"}
    )
    with pytest.raises(CheckpointError, match="different model"):
        gpucnn.load(path)
    path = save_checkpoint(
        tmp_path / "ck2.npz", models.build("seed"), config={"model": "nope", "dataset": "mnist"}
    )
    with pytest.raises(CheckpointError, match="unknown model 'nope'"):
        gpucnn.load(path)


def test_batchnorm_models_predict_with_their_running_statistics(tmp_path):
    model = scaled_weights(models.build("seed-bn", seed=0))
    for _, m in model.named_modules():
        if isinstance(m, gpucnn.nn.BatchNorm2d):
            m.running_mean[...] = 0.3
            m.running_var[...] = 2.0
    path = save_checkpoint(
        tmp_path / "bn.npz", model, config={"model": "seed-bn", "dataset": "mnist"}
    )
    loaded = gpucnn.load(path)
    x = images(4)
    model.eval()
    want = model(((x / 255 - MEAN) / STD)[:, None].astype(np.float32))
    # twice: eval mode must not move the running statistics or draw dropout masks
    np.testing.assert_allclose(loaded.logits(x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loaded.logits(x), want, rtol=1e-5, atol=1e-5)


def test_import_gpucnn_stays_light():
    root = Path(gpucnn.__file__).resolve().parents[1]
    code = (
        "import sys, gpucnn\n"
        "assert callable(gpucnn.load) and callable(gpucnn.export.onnx)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    ).stdout.split()
    heavy = {"prefect", "PIL", "matplotlib", "onnx", "onnxruntime", "requests", "cupy"}
    assert not heavy & {m.split(".")[0] for m in out}
    assert not [m for m in out if m.startswith(("gpucnn.train", "gpucnn.data", "gpucnn.flows"))]
