"""Vectorized kernels vs naive loops written straight from the formulas (float64)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpucnn import functional as F
from gpucnn.backend.cpu import col2im, im2col
from tests.helpers import conv2d_backward_naive, conv2d_naive, pool2d_naive


@st.composite
def conv_case(draw):
    k = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, 2))
    h = draw(st.integers(max(1, k - 2 * pad), 9))
    w = draw(st.integers(max(1, k - 2 * pad), 9))
    n, c, f = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    return n, c, f, k, stride, pad, h, w, seed


@settings(max_examples=60, deadline=None)
@given(conv_case())
def test_conv2d_matches_naive_loops(case):
    n, c, f, k, stride, pad, h, w, seed = case
    g = np.random.default_rng(seed)
    x, wt, b = (
        g.standard_normal((n, c, h, w)),
        g.standard_normal((f, c, k, k)),
        g.standard_normal(f),
    )
    y, cache = F.conv2d_forward(x, wt, b, stride, pad)
    # the output-size formula, checked directly
    assert y.shape == (n, f, (h - k + 2 * pad) // stride + 1, (w - k + 2 * pad) // stride + 1)
    np.testing.assert_allclose(y, conv2d_naive(x, wt, b, stride, pad), rtol=1e-10, atol=1e-10)
    dy = g.standard_normal(y.shape)
    dx, dw, db = F.conv2d_backward(dy, cache)
    for got, want in zip((dx, dw, db), conv2d_backward_naive(x, wt, dy, stride, pad), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("k", "stride", "pad", "shape"),
    [
        (2, 2, 0, (2, 3, 6, 7)),
        (3, 2, 1, (1, 2, 7, 5)),
        (3, 1, 0, (1, 1, 5, 5)),
        (2, 3, 1, (2, 1, 8, 8)),
        (1, 1, 0, (1, 2, 3, 3)),
    ],
)
def test_pooling_matches_naive_loops(k, stride, pad, shape):
    x = np.random.default_rng(0).standard_normal(shape)
    ymax, _ = F.maxpool2d_forward(x, k, stride, pad)
    np.testing.assert_allclose(ymax, pool2d_naive(x, k, stride, pad, np.max))
    yavg, _ = F.avgpool2d_forward(x, k, stride, pad)
    np.testing.assert_allclose(yavg, pool2d_naive(x, k, stride, pad, np.mean), rtol=1e-12)


def test_maxpool_routes_gradient_to_the_maximum_only():
    x = np.array([[[[1.0, 5.0], [3.0, 2.0]]]])
    y, cache = F.maxpool2d_forward(x, 2)
    assert y.item() == 5.0
    dx = F.maxpool2d_backward(np.array([[[[7.0]]]]), cache)
    np.testing.assert_array_equal(dx, [[[[0.0, 7.0], [0.0, 0.0]]]])


def test_col2im_is_the_adjoint_of_im2col():
    # <im2col(x), c> == <x, col2im(c)> for all x, c: the defining property of the backward pass
    g = np.random.default_rng(1)
    x = g.standard_normal((2, 3, 7, 6))
    cols = im2col(x, 3, 2, 1)
    c = g.standard_normal(cols.shape)
    assert np.isclose((cols * c).sum(), (x * col2im(c, x.shape, 3, 2, 1)).sum())


def test_global_pools_reduce_each_plane():
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5))
    np.testing.assert_allclose(F.global_avgpool2d_forward(x)[0], x.mean(axis=(2, 3)))
    np.testing.assert_allclose(F.global_maxpool2d_forward(x)[0], x.max(axis=(2, 3)))


def test_softmax_is_stable_and_normalised():
    z = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, 0.0, 1000.0]])
    p = F.softmax(z)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    logp = F.log_softmax(z)
    np.testing.assert_allclose(logp[1], [-2000.0, -1000.0, 0.0], atol=1e-9)  # no log(0) = -inf
    np.testing.assert_allclose(np.exp(logp), p, atol=1e-15)
