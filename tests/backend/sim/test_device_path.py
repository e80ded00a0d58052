"""The whole device path, not just single kernels: layers, functional ops, launchers,
kernels, loss, optimizer and Trainer on device arrays give what the CPU gives.

In CI this runs under the simulator with tests/backend/sim/fakecupy.py standing in for CuPy
(device arrays are then NumPy arrays of a "cupy" type); on a GPU it runs on real CuPy arrays.
Shapes are tiny: the simulator runs about a thread per millisecond.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import data, nn, optim
from gpucnn.backend import is_device_array, to_host
from gpucnn.train import Trainer

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def small_model(seed: int = 0) -> nn.Sequential:
    g = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, rng=g),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5, rng=1),
        nn.Linear(2 * 3 * 3, 3, rng=g),
    )


def test_a_training_step_on_the_device_matches_the_cpu():
    g = np.random.default_rng(5)
    x, y = g.standard_normal((2, 1, 6, 6)).astype(np.float32), np.array([0, 2])
    models = {"cpu": small_model(), "cuda": small_model().to("cuda")}
    losses = {}
    for device, model in models.items():
        crit = nn.CrossEntropyLoss()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        xx, yy = (x, y) if device == "cpu" else (to_device(x), to_device(y))
        model.zero_grad()
        out = model(xx)
        losses[device] = float(to_host(crit(out, yy)))
        dx = model.backward(crit.backward())
        if device == "cuda":  # nothing fell back to the host on the way
            assert is_device_array(out) and is_device_array(dx)
            assert all(is_device_array(p.grad) for p in model.parameters())
        opt.step()
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=1e-5)
    cpu_params, gpu_params = models["cpu"].parameters(), models["cuda"].parameters()
    # one scale for the model: the conv bias ahead of BatchNorm has a gradient that is exactly
    # 0 in exact arithmetic, so its own scale is float32 rounding noise
    scale = max(np.abs(p.grad).max() for p in cpu_params)
    for p_cpu, p_gpu in zip(cpu_params, gpu_params, strict=True):
        np.testing.assert_allclose(to_host(p_gpu.grad), p_cpu.grad, atol=1e-6 * scale)
        np.testing.assert_allclose(to_host(p_gpu.data), p_cpu.data, atol=1e-6 * scale)
    for (name, b_cpu), (_, b_gpu) in zip(
        models["cpu"].named_buffers(), models["cuda"].named_buffers(), strict=True
    ):
        np.testing.assert_allclose(to_host(b_gpu), b_cpu, atol=1e-6, err_msg=name)


def to_device(a):
    from gpucnn.backend import to_device as put

    return put(a, "cuda")


def test_a_training_step_makes_no_host_transfer():
    import cupy

    from tests.backend.sim import fakecupy

    if cupy.ndarray is not fakecupy.ndarray:
        pytest.skip("counts the host reads of the stand-in CuPy; a real GPU has no counter")
    model = small_model().to("cuda")
    crit = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), 1e-3, amsgrad=True, weight_decay=1e-4)
    g = np.random.default_rng(1)
    x, y = to_device(g.standard_normal((2, 1, 6, 6)).astype(np.float32)), to_device([1, 0])
    before = fakecupy.HOST_READS["n"]
    model.zero_grad()
    loss = crit(model(x), y)
    model.backward(crit.backward())
    opt.step()
    assert fakecupy.HOST_READS["n"] == before  # the step never waited on the device
    float(loss)
    assert fakecupy.HOST_READS["n"] == before + 1  # and logging the loss is one read


def test_trainer_fits_on_the_device_and_saves_a_checkpoint(tmp_path):
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (6, 6, 6), dtype=np.uint8)
    labels = g.integers(0, 3, 6)
    train = data.DataLoader(images, labels, 3, seed=0, device="cuda")
    val = data.DataLoader(images[:3], labels[:3], 3, shuffle=False, device="cuda")
    model = small_model()
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        optim.Adam(model.parameters(), 1e-2, amsgrad=True),
        device="cuda",
        log_every=2,
        progress=False,
    )
    history = trainer.fit(train, val, epochs=1)
    assert all(is_device_array(p.data) for p in model.parameters())
    assert np.isfinite(history["train_loss"][0]) and np.isfinite(history["val_loss"][0])
    path = trainer.save_checkpoint(tmp_path / "ckpt.npz")
    assert path.exists()
