"""Inference keeps nothing: under gpucnn.no_grad() a forward pass leaves no cache behind and
frees each layer's temporaries as it goes; Predictor and Trainer.evaluate run under it; a
backward after such a forward is a clear error; the mode is per thread."""

from __future__ import annotations

import gc
import threading
import tracemalloc

import numpy as np
import pytest

import gpucnn
from gpucnn import data, models, nn, optim
from gpucnn.train import Trainer


def _images(n=256, seed=0):
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


def _kept_after_forward(model, x, grad: bool) -> tuple[int, int]:
    """Bytes still allocated after a forward (its output excepted) and at its peak."""
    with gpucnn.no_grad():
        model(x)  # compile and import whatever the first call needs, outside the count
    gc.collect()
    tracemalloc.start()
    try:
        if grad:
            y = model(x)
        else:
            with gpucnn.no_grad():
                y = model(x)
        gc.collect()
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return now - y.nbytes, peak


@pytest.mark.parametrize("name", ["seed", "seed-bn"])
def test_an_inference_forward_keeps_nothing(name):
    model = models.build(name, seed=0).eval()
    x = _images()
    kept_grad, peak_grad = _kept_after_forward(model, x, grad=True)
    kept, peak = _kept_after_forward(model, x, grad=False)
    assert kept_grad > 20 * 2**20  # a forward that keeps its caches holds tens of MiB
    assert kept < 2**20, f"{kept / 2**20:.1f} MiB left after a no_grad forward"
    assert peak < peak_grad  # and the temporaries went as soon as they were used


def test_a_backward_after_a_no_grad_forward_says_why():
    model = models.build("seed", seed=0)
    crit = nn.CrossEntropyLoss()
    with gpucnn.no_grad():
        loss = crit(model(_images(8)), np.arange(8))
    assert np.isfinite(float(loss))
    with pytest.raises(RuntimeError, match=r"CrossEntropyLoss\.backward.*no_grad"):
        crit.backward()
    for layer in (model, nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(2), nn.Linear(3, 2)):
        with gpucnn.no_grad():
            shape = (4, 3) if isinstance(layer, nn.Linear) else (2, 2, 4, 4)
            x = _images(8) if layer is model else np.ones(shape, np.float32)
            y = layer(x)
        with pytest.raises(RuntimeError, match="no_grad"):
            layer.backward(np.ones_like(y))


def test_the_mode_nests_comes_back_and_is_per_thread():
    assert gpucnn.is_grad_enabled()
    seen = []
    with gpucnn.no_grad():
        with gpucnn.no_grad():
            assert not gpucnn.is_grad_enabled()
        assert not gpucnn.is_grad_enabled()
        t = threading.Thread(target=lambda: seen.append(gpucnn.is_grad_enabled()))
        t.start()
        t.join()
    assert gpucnn.is_grad_enabled() and seen == [True]
    with pytest.raises(KeyError):
        with gpucnn.no_grad():
            raise KeyError("x")
    assert gpucnn.is_grad_enabled()


def _spy_grad_mode(model):
    seen = []
    linear = model[7]  # a layer that runs on its own (the convs run in fused steps)
    real = linear.forward

    def forward(x):
        seen.append(gpucnn.is_grad_enabled())
        return real(x)

    linear.forward = forward
    return seen


def test_predictor_and_trainer_evaluate_run_without_caches():
    model = models.build("seed", seed=0)
    seen = _spy_grad_mode(model)
    predictor = gpucnn.Predictor(model, [str(i) for i in range(10)], 0.1307, 0.3081)
    predictor.predict((_images(12) * 255).astype(np.uint8)[:, 0])
    assert seen and not any(seen)

    seen.clear()
    x, y = _images(32), np.arange(32) % 10
    loader = data.DataLoader((x[:, 0] * 255).astype(np.uint8), y, 16, shuffle=False)
    opt = optim.SGD(model.parameters(), 0.1)
    trainer = Trainer(model, nn.CrossEntropyLoss(), opt, workers=1)  # no replicas: the spy sees all
    trainer.evaluate(loader)
    assert seen and not any(seen)
    assert model[7]._cache is None  # the linear layer kept no input
    trainer.fit(loader, epochs=1)  # and training still keeps what backward needs
    assert any(seen)
