"""The CUDA GEMM (tiled, and split-K with its reduce) against NumPy: every transposition, sizes
that are not multiples of the 64×64×16 tile, alpha and beta, float32 and float64, and the
split heuristic on the training step's shapes. The simulator is slow (a 64×64 tile is 256
Python threads), so the split machinery is exercised with a lowered minimum chunk on a small
K, and the real heuristic on one shape."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn.backend import cpu
from gpucnn.backend import cuda as gpu
from gpucnn.backend.cuda import gemm_module as gm

DTYPES = [np.float32, np.float64]
TRANS = [(False, False), (True, False), (False, True), (True, True)]


def operands(m, n, k, trans_a, trans_b, dtype, seed=0):
    g = np.random.default_rng(seed)
    a = g.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = g.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b


def reference(a, b, trans_a, trans_b, alpha=1.0, beta=0.0, out=None):
    """In float64 from the same inputs: what remains is the kernel's own rounding."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    ref = alpha * ((a.T if trans_a else a) @ (b.T if trans_b else b))
    return ref if beta == 0 else ref + beta * out.astype(np.float64)


def tol(dtype, k):
    """Summation order differs from BLAS: the error grows with K."""
    eps = 1e-6 if dtype == np.float32 else 1e-14
    return {"rtol": 100 * eps, "atol": eps * max(k, 1)}


def run(dev, a, b, out, workspace_size=0, **kw):
    put, get = dev
    d_out = put(out)
    ws = put(np.empty(workspace_size, out.dtype)) if workspace_size else None
    got = gpu.gemm(put(a), put(b), d_out, workspace=ws, **kw)
    assert got is d_out  # written in place
    return get(d_out)


@pytest.fixture
def low_split_threshold(monkeypatch):
    """Split K from 16 deep, so that a K the simulator can afford makes several chunks."""
    gm._plan.cache_clear()
    monkeypatch.setattr(gm, "MIN_SPLIT_K", 16)
    yield
    gm._plan.cache_clear()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("trans_a", "trans_b"), TRANS)
@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (7, 13, 5), (33, 65, 17)])
def test_gemm_matches_numpy(dev, m, n, k, trans_a, trans_b, dtype):
    a, b = operands(m, n, k, trans_a, trans_b, dtype)
    out = np.full((m, n), np.nan, dtype)  # beta = 0: out is never read
    got = run(dev, a, b, out, trans_a=trans_a, trans_b=trans_b)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, reference(a, b, trans_a, trans_b), **tol(dtype, k))


@pytest.mark.parametrize("dtype", DTYPES)
def test_alpha_and_beta(dev, dtype):
    m, n, k = 33, 65, 17
    a, b = operands(m, n, k, True, False, dtype)
    out = np.random.default_rng(1).standard_normal((m, n)).astype(dtype)
    got = run(dev, a, b, out.copy(), trans_a=True, alpha=-0.5, beta=2.0)
    want = reference(a, b, True, False, -0.5, 2.0, out)
    np.testing.assert_allclose(got, want, **tol(dtype, k))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("trans_a", "trans_b"), TRANS)
def test_split_k_matches_numpy(dev, low_split_threshold, trans_a, trans_b, dtype):
    m, n, k = 5, 6, 70
    assert gm._plan(m, n, k) == ((1, 1, 3), 3, 32)  # chunks 32, 32 and a ragged 6
    assert gpu.gemm_workspace_size(m, n, k) == 3 * m * n
    a, b = operands(m, n, k, trans_a, trans_b, dtype)
    out = np.random.default_rng(2).standard_normal((m, n)).astype(dtype)
    kw = {"trans_a": trans_a, "trans_b": trans_b, "alpha": 1.5, "beta": -0.25}
    got = run(dev, a, b, out.copy(), 3 * m * n, **kw)
    np.testing.assert_allclose(
        got, reference(a, b, trans_a, trans_b, 1.5, -0.25, out), **tol(dtype, k)
    )


def test_split_k_is_deterministic_and_optional(dev, low_split_threshold):
    m, n, k = 5, 6, 70
    a, b = operands(m, n, k, True, False, np.float32)
    out = np.random.default_rng(3).standard_normal((m, n)).astype(np.float32)
    size = gpu.gemm_workspace_size(m, n, k)
    got = run(dev, a, b, out.copy(), size + 7, trans_a=True, beta=1.0)  # a larger one is fine
    # the partials are summed in a fixed order: bit for bit the same again
    np.testing.assert_array_equal(run(dev, a, b, out.copy(), size, trans_a=True, beta=1.0), got)
    # without a workspace: one pass over K, the same product up to summation order
    single = run(dev, a, b, out.copy(), trans_a=True, beta=1.0)
    np.testing.assert_allclose(single, got, **tol(np.float32, k))


def test_split_k_on_a_tall_inner_dimension(dev):
    """The heuristic's own split (no lowered threshold): dW = dY @ cols.T in miniature."""
    m, n, k = 5, 6, 700
    assert gm._plan(m, n, k) == ((1, 1, 2), 2, 352)
    a, b = operands(m, n, k, False, True, np.float32)
    out = np.full((m, n), np.nan, np.float32)
    got = run(dev, a, b, out, gpu.gemm_workspace_size(m, n, k), trans_b=True)
    np.testing.assert_allclose(got, reference(a, b, False, True), **tol(np.float32, k))


def test_empty_inner_dimension_scales_out(dev):
    a, b = np.zeros((3, 0)), np.zeros((0, 4))
    out = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(run(dev, a, b, out.copy(), beta=0.5), 0.5 * out)
    np.testing.assert_array_equal(run(dev, a, b, out.copy()), np.zeros((3, 4)))


def test_f_contiguous_operands_are_read_transposed(dev):
    put, get = dev
    a, b = operands(7, 13, 5, True, True, np.float32)  # a (5, 7), b (13, 5)
    out = put(np.empty((7, 13), np.float32))
    gpu.gemm(put(a).T, put(b).T, out)  # views, no copies
    want = reference(a, b, True, True)
    np.testing.assert_allclose(get(out), want, **tol(np.float32, 5))
    np.testing.assert_allclose(cpu.gemm(a.T, b.T, np.empty((7, 13), np.float32)), want, rtol=1e-5)


def test_bad_arguments_are_refused_with_the_shapes():
    a, b = np.zeros((4, 3), np.float32), np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"op\(a\) \(4, 3\) @ op\(b\) \(4, 5\)"):
        gpu.gemm(a, b, np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="float64"):
        gpu.gemm(a, b, np.zeros((3, 5)), trans_a=True)
    a, b, out = np.zeros((5, 700), np.float32), np.zeros((6, 700), np.float32), np.zeros((5, 6))
    with pytest.raises(ValueError, match=r"gemm_workspace_size\(5, 6, 700\) = 60"):
        gpu.gemm(a.astype(np.float64), b.astype(np.float64), out, trans_b=True,
                 workspace=np.zeros(59))  # fmt: skip


def test_split_heuristic_on_the_training_step_shapes():
    """Seed model at batch 64 and 512 (NHW = N*14*14; conv2 F=64, CKK=288)."""
    for batch, splits in ((64, 49), (512, 53)):
        nhw = batch * 14 * 14
        grid, s, kchunk = gm._plan(64, 288, nhw)  # conv dW = dY2 @ cols.T
        assert (grid, s) == ((5, 1, splits), splits)
        assert kchunk % gm.BK == 0 and (s - 1) * kchunk < nhw <= s * kchunk
        assert gm._plan(64, nhw, 288)[1] == 1  # conv forward Y = Wm @ cols
        assert gm._plan(288, nhw, 64)[1] == 1  # conv dcols = Wm.T @ dY2
    assert gm._plan(64, 1000, 10)[1] == 1  # K too shallow to split
    assert gm._plan(4096, 4096, 1 << 20)[1] == 1  # the tiles fill the GPU
    assert gm._plan(1, 1, 1 << 20)[1] == gm.MAX_SPLITS
    assert gpu.gemm_workspace_size(64, 288, 12544) == 49 * 64 * 288
    assert gpu.gemm_workspace_size(64, 12544, 288) == 0
