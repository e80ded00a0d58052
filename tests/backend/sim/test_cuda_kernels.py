"""Every CUDA kernel agrees with the CPU backend: odd sizes, stride > 1, padding, batch 1,
element counts that are not a multiple of the block, float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn.backend import array_module, cpu
from gpucnn.backend import cuda as gpu
from gpucnn.backend.cuda import pool as cuda_pool

# (N, C, H, W, k, stride, pad): 210, 198 and 858 elements against 256-thread blocks
CASES = [
    (2, 3, 5, 7, 3, 1, 1),
    (1, 2, 9, 11, 3, 2, 1),
    (2, 3, 11, 13, 2, 2, 0),
    (1, 1, 6, 5, 3, 3, 1),
    (2, 1, 7, 7, 1, 2, 0),
    (1, 2, 8, 9, 4, 2, 2),
    (1, 1, 4, 5, 2, 3, 3),  # padding wider than the window: whole rows of padding
]
DTYPES = [np.float32, np.float64]


def tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "c", "h", "w", "k", "s", "p"), CASES)
def test_im2col_and_col2im(dev, n, c, h, w, k, s, p, dtype):
    put, get = dev
    g = np.random.default_rng(0)
    x = g.standard_normal((n, c, h, w)).astype(dtype)
    cols = gpu.im2col(put(x), k, s, p)
    np.testing.assert_array_equal(get(cols), cpu.im2col(x, k, s, p))
    assert get(cols).dtype == dtype
    dcols = g.standard_normal(cols.shape).astype(dtype)
    np.testing.assert_allclose(
        get(gpu.col2im(put(dcols), x.shape, k, s, p)),
        cpu.col2im(dcols, x.shape, k, s, p),
        **tol(dtype),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("n", "c", "h", "w", "k", "s", "p"), [cs for cs in CASES if 2 * cs[6] <= cs[4]]
)
def test_pooling(dev, n, c, h, w, k, s, p, dtype):
    put, get = dev
    g = np.random.default_rng(1)
    x = g.standard_normal((n, c, h, w)).astype(dtype)
    y, arg = gpu.maxpool2d_fwd(put(x), k, s, p)
    y_ref, arg_ref = cpu.maxpool2d_fwd(x, k, s, p)
    np.testing.assert_array_equal(get(y), y_ref)
    np.testing.assert_array_equal(get(arg), arg_ref)
    dy = g.standard_normal(y_ref.shape).astype(dtype)
    np.testing.assert_allclose(
        get(gpu.maxpool2d_bwd(put(dy), arg, x.shape, k, s, p)),
        cpu.maxpool2d_bwd(dy, arg_ref, x.shape, k, s, p),
        **tol(dtype),
    )
    np.testing.assert_allclose(
        get(gpu.avgpool2d_fwd(put(x), k, s, p)), cpu.avgpool2d_fwd(x, k, s, p), **tol(dtype)
    )
    np.testing.assert_allclose(
        get(gpu.avgpool2d_bwd(put(dy), x.shape, k, s, p)),
        cpu.avgpool2d_bwd(dy, x.shape, k, s, p),
        **tol(dtype),
    )


def test_maxpool_lets_nan_through(dev):
    put, get = dev
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    y, _ = gpu.maxpool2d_fwd(put(x), 2, 2, 0)
    y_ref, _ = cpu.maxpool2d_fwd(x, 2, 2, 0)
    assert np.isnan(get(y)[0, 0, 0, 0]) and np.isnan(y_ref[0, 0, 0, 0])
    np.testing.assert_array_equal(get(y)[0, 0, 1], y_ref[0, 0, 1])


def test_launchers_reject_bad_arrays(dev):
    put, _ = dev
    with pytest.raises(ValueError, match=r"im2col: expected a 4-D array, got shape \(3, 4\)"):
        gpu.im2col(put(np.zeros((3, 4), np.float32)), 3, 1, 1)
    with pytest.raises(ValueError, match="maxpool2d: expected float32"):
        gpu.maxpool2d_fwd(put(np.zeros((1, 1, 4, 4), np.int32)), 2, 2, 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "c", "h", "w"), [(3, 1, 7, 9), (1, 2, 6, 6), (2, 1, 28, 28)])
def test_affine_warp(dev, n, c, h, w, dtype):
    put, get = dev
    g = np.random.default_rng(2)
    x = g.random((n, c, h, w)).astype(dtype)
    theta, s = g.uniform(-0.5, 0.5, n), g.uniform(0.8, 1.2, n)
    inv = np.stack(
        [np.cos(theta) / s, np.sin(theta) / s, -np.sin(theta) / s, np.cos(theta) / s], axis=1
    ).astype(np.float32)
    shift = g.uniform(-3, 3, (n, 2)).astype(np.float32)
    ref = cpu.affine_warp(x, inv, shift)
    np.testing.assert_allclose(get(gpu.affine_warp(put(x), put(inv), put(shift))), ref, atol=1e-4)
    ident = np.tile(np.array([1, 0, 0, 1], np.float32), (n, 1))
    np.testing.assert_allclose(
        get(gpu.affine_warp(put(x), put(ident), put(np.zeros((n, 2), np.float32)))), x, atol=1e-6
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 1, 1), (3, 2, 16, 17)])
def test_global_pooling(dev, shape, dtype):
    put, get = dev
    g = np.random.default_rng(3)
    x = g.standard_normal(shape).astype(dtype)
    x[0, 0].flat[-1] = x[0, 0].max()  # a tie: the first maximum wins
    if shape[1] > 1:
        x[0, 1].flat[1] = np.nan  # a NaN wins its plane
    np.testing.assert_allclose(
        get(gpu.global_avgpool2d_fwd(put(x))), cpu.global_avgpool2d_fwd(x), **tol(dtype)
    )
    y, arg = gpu.global_maxpool2d_fwd(put(x))
    y_ref, arg_ref = cpu.global_maxpool2d_fwd(x)
    np.testing.assert_array_equal(get(y), y_ref)
    np.testing.assert_array_equal(get(arg), arg_ref)
    dy = g.standard_normal(shape[:2]).astype(dtype)
    np.testing.assert_allclose(
        get(gpu.global_avgpool2d_bwd(put(dy), shape)),
        cpu.global_avgpool2d_bwd(dy, shape),
        **tol(dtype),
    )
    np.testing.assert_array_equal(
        get(gpu.global_maxpool2d_bwd(put(dy), arg, shape)),
        cpu.global_maxpool2d_bwd(dy, arg_ref, shape),
    )


# (N, C, H, W, k, stride, pad) for the pooling backward paths: windows apart (one write per
# pixel) with rows and columns no window reaches, gaps between windows and padding; then
# overlapping windows (atomic adds for max). 84 to 280 elements each.
POOL_CASES = [
    (2, 2, 7, 9, 2, 2, 0),  # the seed model's pool, odd H and W: the last row/column stay 0
    (1, 2, 8, 10, 3, 3, 0),  # H, W not multiples of k
    (1, 2, 8, 7, 3, 3, 1),
    (1, 2, 9, 11, 2, 3, 0),  # stride > k: a gap between windows
    (1, 2, 8, 9, 2, 3, 1),
    (1, 2, 9, 7, 3, 2, 1),  # overlapping
    (1, 2, 6, 7, 2, 1, 0),
    (1, 2, 6, 5, 3, 1, 1),
]


class _Poisoned:
    """An array module whose empty() fills with NaN (-7 for ints): a launcher that leaves any
    element of a fresh output unwritten shows it."""

    def __init__(self, xp):
        self.xp = xp

    def __getattr__(self, name):
        return getattr(self.xp, name)

    def empty(self, shape, dtype=float):
        a = self.xp.empty(shape, dtype=dtype)
        a.fill(np.nan if np.dtype(dtype).kind == "f" else -7)
        return a


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "c", "h", "w", "k", "s", "p"), POOL_CASES)
def test_pooling_backward_paths(dev, monkeypatch, n, c, h, w, k, s, p, dtype):
    put, get = dev
    monkeypatch.setattr(cuda_pool, "array_module", lambda a: _Poisoned(array_module(a)))
    g = np.random.default_rng(4)
    x = g.integers(0, 3, (n, c, h, w)).astype(dtype)  # ties everywhere: the first max wins
    x[0, 0, 1, 1] = x[0, 1, h - 1, w - 1] = np.nan  # a NaN wins every window it is in
    x[-1, -1, 2, 3] = 5.0  # one maximum that wins every window it is in
    y, arg = gpu.maxpool2d_fwd(put(x), k, s, p)
    y_ref, arg_ref = cpu.maxpool2d_fwd(x, k, s, p)
    np.testing.assert_array_equal(get(y), y_ref)
    np.testing.assert_array_equal(get(arg), arg_ref)
    dy = g.standard_normal(y_ref.shape).astype(dtype)
    dx = get(gpu.maxpool2d_bwd(put(dy), arg, x.shape, k, s, p))
    dx_ref = cpu.maxpool2d_bwd(dy, arg_ref, x.shape, k, s, p)
    assert not np.isnan(dx).any()
    if s >= k:  # one write per pixel: the CPU's bits
        np.testing.assert_array_equal(dx, dx_ref)
    else:  # atomic adds, in any order
        np.testing.assert_allclose(dx, dx_ref, **tol(dtype))
    x = g.standard_normal((n, c, h, w)).astype(dtype)
    # the CPU scales by a float64 1/k² (Numba promotes), the GPU by the dtype's: rounding apart
    np.testing.assert_allclose(
        get(gpu.avgpool2d_fwd(put(x), k, s, p)), cpu.avgpool2d_fwd(x, k, s, p), **tol(dtype)
    )
    np.testing.assert_allclose(
        get(gpu.avgpool2d_bwd(put(dy), x.shape, k, s, p)),
        cpu.avgpool2d_bwd(dy, x.shape, k, s, p),
        **tol(dtype),
    )


def test_maxpool_backward_sums_a_shared_winner(dev):
    put, get = dev
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 2, 2] = 1.0  # wins all nine 3×3 windows (stride 1, pad 1) that contain it
    _, arg = gpu.maxpool2d_fwd(put(x), 3, 1, 1)
    dy = np.full((1, 1, 5, 5), 0.5, np.float32)
    dx = get(gpu.maxpool2d_bwd(put(dy), arg, x.shape, 3, 1, 1))
    np.testing.assert_array_equal(dx, cpu.maxpool2d_bwd(dy, get(arg), x.shape, 3, 1, 1))
    assert dx[0, 0, 2, 2] == 4.5


def test_pooling_backward_checks_its_arguments(dev):
    put, _ = dev
    dy = put(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"maxpool2d_bwd: expected dy of shape \(1, 1, 2, 2\)"):
        gpu.maxpool2d_bwd(dy, put(np.zeros((1, 1, 3, 3), np.int32)), (1, 1, 4, 4), 2, 2, 0)
    with pytest.raises(ValueError, match="maxpool2d_bwd: expected an int32 argmax"):
        gpu.maxpool2d_bwd(dy, put(np.zeros((1, 1, 3, 3), np.int64)), (1, 1, 6, 6), 2, 2, 0)
    with pytest.raises(ValueError, match=r"avgpool2d_bwd: expected dy of shape \(1, 1, 4, 4\)"):
        gpu.avgpool2d_bwd(dy, (1, 1, 4, 4), 1, 1, 0)
