"""Direct convolution on the GPU (gpucnn.backend.cuda.direct) agrees with its CPU twin: odd
sizes, strides, padding wider than the filter, several channels, float32 and float64; the
weight gradient is the same bits from run to run with several blocks per filter; too many taps
is refused by name; and the functional path goes direct where the setting admits the layer."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import functional as F
from gpucnn.backend import cpu
from gpucnn.backend import cuda as gpu
from gpucnn.backend.cuda import direct, launch

# (N, C, H, W, F, k, stride, pad)
CASES = [
    (2, 1, 8, 8, 4, 3, 1, 1),
    (1, 1, 7, 9, 3, 3, 2, 1),
    (2, 2, 9, 6, 3, 3, 1, 0),
    (1, 1, 4, 5, 2, 2, 3, 3),
    (1, 3, 6, 5, 2, 3, 2, 2),
]


def _data(case, dtype, seed=0):
    n, c, h, w, f, k, _, _ = case
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, c, h, w)).astype(dtype)
    return x, g.standard_normal((f, c, k, k)).astype(dtype), g.standard_normal(f).astype(dtype)


@pytest.mark.parametrize(
    ("case", "dtype"), [(c, np.float32) for c in CASES] + [(CASES[1], np.float64)]
)
def test_forward_and_weight_gradient_match_the_cpu(dev, case, dtype):
    put, get = dev
    x, w, b = _data(case, dtype)
    stride, pad = case[6], case[7]
    y = gpu.conv2d_direct_fwd(put(x), put(w), put(b), stride, pad)
    y_ref = cpu.conv2d_direct_fwd(x, w, b, stride, pad)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    assert get(y).dtype == dtype and get(y).shape == y_ref.shape
    np.testing.assert_allclose(get(y), y_ref, **tol)
    y0 = gpu.conv2d_direct_fwd(put(x), put(w), None, stride, pad)
    np.testing.assert_allclose(get(y0), cpu.conv2d_direct_fwd(x, w, None, stride, pad), **tol)

    dy = np.random.default_rng(1).standard_normal(y_ref.shape).astype(dtype)
    dw, db = gpu.conv2d_direct_bwd(put(dy), put(x), case[5], stride, pad)
    dw_ref, db_ref = cpu.conv2d_direct_bwd(dy, x, case[5], stride, pad)
    assert get(dw).shape == w.shape and get(db).shape == b.shape
    np.testing.assert_allclose(get(dw), dw_ref, **tol)
    np.testing.assert_allclose(get(db), db_ref, **tol)


def test_weight_gradient_is_the_same_bits_each_run_with_several_blocks(dev, monkeypatch):
    put, get = dev
    monkeypatch.setattr(launch, "FILTER_GRID_BLOCKS", 6)
    launch.filter_grid.cache_clear()
    try:
        x, w, _ = _data((3, 1, 13, 14, 2, 3, 1, 1), np.float32)
        grid = launch.filter_grid(2, 3 * 13 * 14, direct.BWD_THREADS)
        assert grid == (3, 2)  # three blocks per filter
        dy = put(np.random.default_rng(2).standard_normal((3, 2, 13, 14)).astype(np.float32))
        first = [get(a) for a in gpu.conv2d_direct_bwd(dy, put(x), 3, 1, 1)]
        again = [get(a) for a in gpu.conv2d_direct_bwd(dy, put(x), 3, 1, 1)]
        ref = cpu.conv2d_direct_bwd(get(dy), x, 3, 1, 1)
        for a, b, r in zip(first, again, ref, strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-4)
    finally:
        launch.filter_grid.cache_clear()


def test_too_many_taps_is_refused_by_name(dev):
    put, _ = dev
    x = put(np.zeros((1, 4, 6, 6), np.float32))
    w = put(np.zeros((2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"conv2d_direct_fwd: C\*k\*k = 4\*3\*3 = 36 taps"):
        gpu.conv2d_direct_fwd(x, w, None, 1, 1)
    with pytest.raises(ValueError, match=r"conv2d_direct_bwd: .*36 taps.*im2col"):
        gpu.conv2d_direct_bwd(put(np.zeros((1, 2, 6, 6), np.float32)), x, 3, 1, 1)
    assert direct.MAX_TAPS == 32


def test_functional_path_goes_direct_on_the_device(monkeypatch):
    from gpucnn.backend import is_device_array, to_device, to_host

    x, w, b = _data(CASES[0], np.float32)
    y_ref, cache_ref = F.conv2d_forward(x, w, b, 1, 1)  # the CPU, through im2col
    dy = np.random.default_rng(1).standard_normal(y_ref.shape).astype(np.float32)
    grads_ref = F.conv2d_backward(dy, cache_ref)
    monkeypatch.setattr(gpu, "DIRECT_CONV_MAX_TAPS", 9)
    put = lambda a: to_device(a, "cuda")  # noqa: E731
    y, cache = F.conv2d_forward(put(x), put(w), put(b), 1, 1)
    assert cache.algorithm == "direct" and is_device_array(y)
    np.testing.assert_allclose(to_host(y), y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(F.conv2d_backward(put(dy), cache), grads_ref, strict=True):
        np.testing.assert_allclose(to_host(got), want, rtol=1e-4, atol=1e-4)
