"""The Winograd tile transforms on the GPU agree with their CPU twins (gpucnn.backend.cpu.
winograd), and a whole Winograd convolution on device arrays with the CPU's: F(2×2, 3×3) and
F(4×4, 3×3), padding 0 and 1, odd sizes (partial tiles), batch 1, float32 and float64.
Tiny shapes: the simulator runs every thread in Python."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn.backend import cpu
from gpucnn.backend import cuda as gpu
from gpucnn.functional import winograd

# (N, C, F, H, W, pad, m)
CASES = [
    (1, 2, 3, 5, 7, 1, 2),
    (2, 1, 2, 4, 4, 0, 2),
    (1, 2, 2, 6, 5, 1, 4),
    (1, 1, 2, 3, 3, 0, 4),
]


def _data(case, dtype, seed=0):
    n, c, f, h, w, pad, m = case
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, c, h, w)).astype(dtype)
    wt = g.standard_normal((f, c, 3, 3)).astype(dtype)
    b = g.standard_normal(f).astype(dtype)
    return x, wt, b


def _tol(dtype):
    return {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-11, "atol": 1e-11}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_transforms_match_the_cpu(dev, case, dtype):
    put, get = dev
    n, c, f, h, w, pad, m = case
    x, wt, b = _data(case, dtype)
    out_shape = (n, f, h + 2 * pad - 2, w + 2 * pad - 2)
    tol = _tol(dtype)

    v = cpu.winograd_input_tf(x, m, pad)
    np.testing.assert_allclose(get(gpu.winograd_input_tf(put(x), m, pad)), v, **tol)
    mt = v @ winograd.filter_transform(wt, m)
    y = cpu.winograd_output_tf(mt, b, out_shape, m)
    np.testing.assert_allclose(get(gpu.winograd_output_tf(put(mt), put(b), out_shape, m)), y, **tol)

    dy = np.random.default_rng(1).standard_normal(out_shape).astype(dtype)
    dm, db = cpu.winograd_grad_tf(dy, m)
    dm_gpu, db_gpu = gpu.winograd_grad_tf(put(dy), m)
    np.testing.assert_allclose(get(dm_gpu), dm, **tol)
    np.testing.assert_allclose(get(db_gpu), db, **tol)
    dx = cpu.winograd_input_grad(v, x.shape, m, pad)  # v as a stand-in gradient
    np.testing.assert_allclose(get(gpu.winograd_input_grad(put(v), x.shape, m, pad)), dx, **tol)


@pytest.mark.parametrize("case", [CASES[0], CASES[2]])
def test_pooled_epilogue_matches_the_cpu(dev, case):
    put, get = dev
    n, c, f, h, w, pad, m = case
    x, wt, b = _data(case, np.float64)
    out_shape = (n, f, h + 2 * pad - 2, w + 2 * pad - 2)
    mt = cpu.winograd_input_tf(x, m, pad) @ winograd.filter_transform(wt, m)
    y, arg = cpu.winograd_relu_pool2x2_fwd(mt, b, out_shape, m)
    y_gpu, arg_gpu = gpu.winograd_relu_pool2x2_fwd(put(mt), put(b), out_shape, m)
    np.testing.assert_allclose(get(y_gpu), y, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(get(arg_gpu), arg)

    dy = np.random.default_rng(2).standard_normal(y.shape)
    dm, db = cpu.winograd_relu_pool2x2_bwd(dy, arg, y, out_shape[2:], m)
    dm_gpu, db_gpu = gpu.winograd_relu_pool2x2_bwd(put(dy), arg_gpu, y_gpu, out_shape[2:], m)
    np.testing.assert_allclose(get(dm_gpu), dm, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(get(db_gpu), db, rtol=1e-12, atol=1e-12)


def test_a_winograd_conv_on_device_arrays_matches_the_cpu(dev, monkeypatch):
    """Asked for explicitly (the CUDA backend keeps it off until timed): the layer's math runs
    on device arrays, forward and backward, and agrees with the CPU's Winograd path."""
    from gpucnn import functional as F

    put, get = dev
    x, wt, b = _data((2, 2, 3, 6, 6, 1, 2), np.float64)
    monkeypatch.setattr(gpu, "WINOGRAD_TILE", 2)
    y, cache = F.conv2d_forward(put(x), put(wt), put(b), 1, 1, algorithm="winograd")
    y_ref, cache_ref = F.conv2d_forward(x, wt, b, 1, 1, algorithm="winograd")
    assert cache.algorithm == cache_ref.algorithm == "winograd"
    np.testing.assert_allclose(get(y), y_ref, rtol=1e-12, atol=1e-12)
    dy = np.random.default_rng(3).standard_normal(y_ref.shape)
    got = F.conv2d_backward(put(dy), cache)
    for g_dev, g_ref in zip(got, F.conv2d_backward(dy, cache_ref), strict=True):
        np.testing.assert_allclose(get(g_dev), g_ref, rtol=1e-12, atol=1e-12)
