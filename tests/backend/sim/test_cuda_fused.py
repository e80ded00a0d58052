"""The fused conv epilogue (bias + ReLU + 2×2 max pool) and its backward on the GPU agree with
their CPU twins: y, the argmax and dY2 bit for bit, db to rounding (another order of the sum).
Odd sizes, batch 1, a filter whose tiles span several blocks, ties, NaN, all-negative windows,
no bias, float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn.backend import cpu
from gpucnn.backend import cuda as gpu
from gpucnn.backend.cuda import launch

# (F, N, OH, OW) of the GEMM output
SHAPES = [(3, 2, 6, 8), (2, 1, 5, 7), (4, 2, 7, 6), (1, 1, 2, 2)]  # and (2, 3, 23, 25) below
DTYPES = [np.float32, np.float64]


def _inputs(shape, dtype, seed=0):
    g = np.random.default_rng(seed)
    yt = g.standard_normal(shape).astype(dtype)
    yt[0, 0, :2, :2] = 0.5  # a tie: the first element wins
    yt[-1, -1, -2:, -2:] = -3.0  # a window with no positive value (after the bias below)
    b = g.standard_normal(shape[0]).astype(dtype) * 0.5
    b[-1] = 0.0
    return yt, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_match_the_cpu(dev, shape, dtype):
    put, get = dev
    yt, b = _inputs(shape, dtype)
    y, arg = gpu.conv_relu_pool2x2_fwd(put(yt), put(b))
    y_ref, arg_ref = cpu.conv_relu_pool2x2_fwd(yt, b)
    np.testing.assert_array_equal(get(y), y_ref)
    np.testing.assert_array_equal(get(arg), arg_ref)
    assert get(y).dtype == dtype and get(arg).dtype == np.int32

    dy = np.random.default_rng(1).standard_normal(y_ref.shape).astype(dtype)
    dy2, db = gpu.conv_relu_pool2x2_bwd(put(dy), arg, y, shape[2:])
    dy2_ref, db_ref = cpu.conv_relu_pool2x2_bwd(dy, arg_ref, y_ref, shape[2:])
    np.testing.assert_array_equal(get(dy2), dy2_ref)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(get(db), db_ref, rtol=rtol, atol=rtol)


def test_no_bias_and_nan(dev):
    put, get = dev
    yt, _ = _inputs((2, 2, 6, 6), np.float32)
    yt[1, 0, 2, 3] = np.nan
    y, arg = gpu.conv_relu_pool2x2_fwd(put(yt), None)
    y_ref, arg_ref = cpu.conv_relu_pool2x2_fwd(yt, None)
    np.testing.assert_array_equal(get(y), y_ref)
    np.testing.assert_array_equal(get(arg), arg_ref)
    assert np.isnan(y_ref[0, 1, 1, 1]) and arg_ref[0, 1, 1, 1] == 1


def test_db_is_the_same_bits_each_run_with_several_blocks_per_filter(dev, monkeypatch):
    put, get = dev
    monkeypatch.setattr(launch, "FILTER_GRID_BLOCKS", 8)
    launch.filter_grid.cache_clear()
    try:
        yt, b = _inputs((2, 3, 23, 25), np.float32)
        y, arg = gpu.conv_relu_pool2x2_fwd(put(yt), put(b))
        assert launch.filter_grid(2, 3 * 12 * 13) == (2, 2)  # two blocks per filter
        dy = put(np.random.default_rng(2).standard_normal(y.shape).astype(np.float32))
        first = get(gpu.conv_relu_pool2x2_bwd(dy, arg, y, (23, 25))[1])
        again = get(gpu.conv_relu_pool2x2_bwd(dy, arg, y, (23, 25))[1])
        np.testing.assert_array_equal(first, again)
        ref = cpu.conv_relu_pool2x2_bwd(get(dy), get(arg), get(y), (23, 25))[1]
        np.testing.assert_allclose(first, ref, rtol=1e-5, atol=1e-5)
    finally:
        launch.filter_grid.cache_clear()


def test_backward_checks_its_arguments(dev):
    put, _ = dev
    yt, b = _inputs((2, 2, 6, 6), np.float32)
    y, arg = gpu.conv_relu_pool2x2_fwd(put(yt), put(b))
    with pytest.raises(ValueError, match="must all be"):
        gpu.conv_relu_pool2x2_bwd(y, arg, y, (8, 6))
    with pytest.raises(ValueError, match="expected a bias"):
        gpu.conv_relu_pool2x2_fwd(put(yt), put(b[:1]))


def test_the_fused_functional_op_on_the_device_matches_the_cpu(dev):
    from gpucnn import functional as F

    put, get = dev
    g = np.random.default_rng(3)
    x = g.standard_normal((2, 2, 7, 6)).astype(np.float32)
    w = g.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = g.standard_normal(3).astype(np.float32)
    y, cache = F.conv2d_relu_maxpool_forward(put(x), put(w), put(b), 1, 1)
    y_ref, cache_ref = F.conv2d_relu_maxpool_forward(x, w, b, 1, 1)
    np.testing.assert_allclose(get(y), y_ref, rtol=1e-5, atol=1e-6)
    dy = g.standard_normal(y_ref.shape).astype(np.float32)
    grads = F.conv2d_relu_maxpool_backward(put(dy), cache)
    grads_ref = F.conv2d_relu_maxpool_backward(dy, cache_ref)
    for got, ref in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(get(got), ref, rtol=1e-5, atol=1e-5)


def test_a_fused_model_step_on_the_device_matches_the_cpu(monkeypatch):
    from gpucnn import nn, optim
    from gpucnn.backend import is_device_array, to_device, to_host

    monkeypatch.setattr(gpu, "FUSES_CONV_RELU_POOL", True)  # off until timed on a GPU

    def model():
        g = np.random.default_rng(0)
        return nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1, rng=g),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * 3 * 3, 3, rng=g),
        )

    g = np.random.default_rng(5)
    x, y = g.standard_normal((2, 1, 7, 6)).astype(np.float32), np.array([0, 2])
    models = {"cpu": model(), "cuda": model().to("cuda")}
    for device, m in models.items():
        m[0].weight.data *= 30
        assert type(m.run_steps()[0][1]).__name__ == "ConvReLUPool", device
        crit = nn.CrossEntropyLoss()
        opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        xx, yy = (x, y) if device == "cpu" else (to_device(x, "cuda"), to_device(y, "cuda"))
        m.zero_grad()
        out = m(xx)
        crit(out, yy)
        dx = m.backward(crit.backward())
        if device == "cuda":
            assert is_device_array(out) and is_device_array(dx)
        opt.step()
    for p_cpu, p_gpu in zip(models["cpu"].parameters(), models["cuda"].parameters(), strict=True):
        np.testing.assert_allclose(to_host(p_gpu.grad), p_cpu.grad, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(to_host(p_gpu.data), p_cpu.data, rtol=1e-5, atol=1e-6)
