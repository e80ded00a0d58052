"""Winograd convolution F(m×m, 3×3) (gpucnn.functional.winograd, backend/cpu/winograd.py):
its matrices in exact arithmetic, the whole layer against the naive loops and against im2col
in float64 (tight), the fused ReLU + 2×2 max-pool variant against the fused im2col step, the
float32 error against float64 as measured (benchmarks/results/winograd-cpu.md), and which
layers take it (the backend's measured switch, repr and summary)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from gpucnn import functional as F
from gpucnn import models, nn
from gpucnn.backend import CPU, cpu
from gpucnn.backend.winograd import _MATRICES, matrices, multiplications
from gpucnn.functional import winograd
from tests.helpers import conv2d_backward_naive, conv2d_naive, gradcheck_module

TILES = (2, 4)


@pytest.mark.parametrize("m", TILES)
def test_the_matrices_compute_the_correlation_exactly(m):
    """y = Aᵀ[(G g) ⊙ (Bᵀ d)] is the correlation of d with g in rational arithmetic, for every
    d and g (it is bilinear, so the basis vectors suffice)."""
    bt, g, at = (
        [[Fraction(v).limit_denominator(100) for v in row] for row in a] for a in _MATRICES[m]
    )
    alpha = m + 2
    for i in range(alpha):
        for k in range(3):
            gd = [sum(g[p][q] * (q == k) for q in range(3)) for p in range(alpha)]
            bd = [sum(bt[p][q] * (q == i) for q in range(alpha)) for p in range(alpha)]
            y = [sum(at[o][p] * gd[p] * bd[p] for p in range(alpha)) for o in range(m)]
            # the correlation: y[o] = sum_k d[o + k] g[k], here d = e_i and g = e_k
            assert y == [Fraction(int(o + k == i)) for o in range(m)], (m, i, k)


def test_multiplication_counts():
    assert multiplications(2, 1, 1) == (16, 36)  # 2.25x fewer
    assert multiplications(4, 1, 1) == (36, 144)  # 4x fewer
    with pytest.raises(ValueError, match=r"no F\(3x3, 3x3\).*\(2, 4\)"):
        matrices(3)


# (N, C, F, H, W, pad): 1×1 and 5×7 and 13×13 and 28×28 images, batch 1, many channels
CASES = [
    (2, 3, 4, 1, 1, 1),
    (1, 2, 3, 5, 7, 1),
    (2, 3, 2, 5, 7, 0),
    (1, 4, 5, 13, 13, 1),
    (1, 2, 3, 13, 13, 0),
    (1, 2, 2, 28, 28, 1),
    (1, 40, 3, 6, 6, 1),
    (2, 3, 2, 3, 3, 0),
]


def _data(n, c, f, h, w, seed=0, dtype=np.float64):
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, c, h, w)).astype(dtype)
    wt = g.standard_normal((f, c, 3, 3)).astype(dtype)
    b = g.standard_normal(f).astype(dtype)
    return x, wt, b


@pytest.mark.parametrize("m", TILES)
@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_match_the_naive_loops(case, m, monkeypatch):
    n, c, f, h, w, pad = case
    x, wt, b = _data(n, c, f, h, w)
    monkeypatch.setattr(cpu, "WINOGRAD_TILE", m)
    y, cache = F.conv2d_forward(x, wt, b, 1, pad, algorithm="winograd")
    assert cache.algorithm == "winograd"
    np.testing.assert_allclose(y, conv2d_naive(x, wt, b, 1, pad), rtol=1e-10, atol=1e-10)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    got = F.conv2d_backward(dy, cache)
    want = conv2d_backward_naive(x, wt, dy, 1, pad)
    for name, g_got, g_want in zip(("dx", "dw", "db"), got, want, strict=True):
        np.testing.assert_allclose(g_got, g_want, rtol=1e-10, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("m", TILES)
def test_agrees_with_im2col_and_skips_what_is_not_needed(m, monkeypatch):
    x, wt, b = _data(2, 5, 6, 9, 11)
    monkeypatch.setattr(cpu, "WINOGRAD_TILE", m)
    y, cw = F.conv2d_forward(x, wt, b, 1, 1, algorithm="winograd")
    y_ref, ci = F.conv2d_forward(x, wt, b, 1, 1, algorithm="im2col")
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    for got, want in zip(F.conv2d_backward(dy, cw), F.conv2d_backward(dy, ci), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    dx, dw, db = F.conv2d_backward(dy, cw, need_dx=False)
    assert dx is None and dw is not None
    dx, dw, db = F.conv2d_backward(dy, cw, need_params=False)
    assert dw is None and db is None and dx is not None


@pytest.mark.parametrize("m", TILES)
@pytest.mark.parametrize(("h", "w", "pad"), [(14, 14, 1), (7, 9, 1), (8, 8, 0), (5, 6, 1)])
def test_the_fused_relu_pool_step_matches_the_im2col_one(m, h, w, pad, monkeypatch):
    """Odd conv outputs leave a last row or column out of every window: both paths agree."""
    x, wt, b = _data(2, 3, 4, h, w, seed=3)
    monkeypatch.setattr(cpu, "WINOGRAD_TILE", m)
    y, cw = F.conv2d_relu_maxpool_forward(x, wt, b, 1, pad, algorithm="winograd")
    y_ref, ci = F.conv2d_relu_maxpool_forward(x, wt, b, 1, pad, algorithm="im2col")
    assert cw.algorithm == "winograd" and ci.algorithm == "im2col"
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(cw.arg, ci.arg)  # the argmax
    dy = np.random.default_rng(4).standard_normal(y.shape)
    got = F.conv2d_relu_maxpool_backward(dy, cw)
    for g_got, g_want in zip(got, F.conv2d_relu_maxpool_backward(dy, ci), strict=True):
        np.testing.assert_allclose(g_got, g_want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("m", TILES)
@pytest.mark.parametrize(("pad", "nhw"), [(1, (2, 5, 6)), (0, (1, 6, 7)), (1, (1, 1, 1))])
def test_gradcheck_through_conv2d(m, pad, nhw, monkeypatch):
    monkeypatch.setattr(cpu, "WINOGRAD_TILE", m)
    layer = nn.Conv2d(2, 3, 3, padding=pad, rng=0, algorithm="winograd").to(dtype=np.float64)
    layer.bias.data[...] = np.random.default_rng(5).standard_normal(3)
    n, h, w = nhw
    gradcheck_module(layer, np.random.default_rng(1).standard_normal((n, 2, h, w)))


# measured by benchmarks/winograd_error.py (benchmarks/results/winograd-cpu.md): the largest
# float32 error relative to the largest output, with room for other seeds and shapes
FLOAT32_MAX_ERROR = {"im2col": 2e-6, 2: 2e-6, 4: 3e-5}


@pytest.mark.parametrize("m", TILES)
def test_float32_error_is_as_measured(m):
    x, wt, _ = _data(8, 32, 64, 14, 14, seed=6)
    y64 = conv2d_naive(x, wt, np.zeros(64), 1, 1)
    y, _ = winograd.forward(x.astype(np.float32), wt.astype(np.float32), None, 1, m)
    err = np.abs(y - y64).max() / np.abs(y64).max()
    assert err < FLOAT32_MAX_ERROR[m]
    if m == 4:  # the larger entries of F(4x4, 3x3) cost accuracy, as stated
        y2, _ = winograd.forward(x.astype(np.float32), wt.astype(np.float32), None, 1, 2)
        assert err > 2 * np.abs(y2 - y64).max() / np.abs(y64).max()


def test_which_layers_take_it_on_this_cpu():
    be = CPU
    tile, min_c = cpu.WINOGRAD_TILE, cpu.WINOGRAD_MIN_CHANNELS
    assert tile in (0, 2, 4)
    if tile:
        assert F.conv_algorithm(be, min_c, 3, 1, 1) == "winograd"
        assert F.conv_algorithm(be, 64, 3, 1, 0) == "winograd"
    assert F.conv_algorithm(be, 64, 3, 2, 1) == "im2col"  # stride 2
    assert F.conv_algorithm(be, 64, 5, 1, 2) == "im2col"  # 5×5
    assert F.conv_algorithm(be, max(1, min_c - 1), 3, 1, 1) == "im2col"  # too thin
    assert F.conv_algorithm(be, 64, 3, 1, 1, "im2col") == "im2col"  # asked for


def test_repr_and_summary_say_which_algorithm_runs(monkeypatch):
    monkeypatch.setattr(cpu, "WINOGRAD_TILE", 2)
    monkeypatch.setattr(cpu, "WINOGRAD_MIN_CHANNELS", 8)
    model = models.build("seed", seed=0)
    text = repr(model)
    assert (
        "Conv2d(1, 32, kernel_size=3, stride=1, padding=1, bias=True, runs='im2col+GEMM')" in text
    )
    assert "runs='winograd F(2x2,3x3)'" in text
    table = model.summary((1, 28, 28), print_fn=None)
    assert "Conv2d [im2col+GEMM]" in table and "Conv2d [winograd F(2x2,3x3)]" in table
    assert "runs='im2col+GEMM'" in repr(nn.Conv2d(32, 64, 3, padding=1, algorithm="im2col"))


def test_a_bad_algorithm_is_a_clear_error():
    with pytest.raises(ValueError, match=r"algorithm must be one of 'auto', 'im2col'.*'fft'"):
        nn.Conv2d(2, 3, 3, algorithm="fft")
    with pytest.raises(ValueError, match=r"3x3 filters at stride 1.*kernel 5x5, stride 1"):
        nn.Conv2d(2, 3, 5, algorithm="winograd")
    with pytest.raises(ValueError, match=r"kernel 3x3, stride 2"):
        F.conv2d_forward(np.zeros((1, 2, 6, 6)), np.zeros((3, 2, 3, 3)), None, 2, 1, "winograd")


def test_launchers_refuse_mismatched_shapes():
    mt = np.zeros((16, 10, 4), np.float32)
    with pytest.raises(ValueError, match=r"10 tiles, but 1 images of 6x6 outputs make 1x3x3"):
        cpu.winograd_output_tf(mt, None, (1, 4, 6, 6), 2)
    with pytest.raises(ValueError, match="expected a float 4-D array"):
        cpu.winograd_input_tf(np.zeros((2, 3, 4), np.float32), 2, 1)
