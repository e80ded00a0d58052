"""Direct convolution (gpucnn.backend.cpu.direct, gpucnn.functional.conv where a backend's
DIRECT_CONV_MAX_TAPS admits the layer): against the naive loops, against the im2col path, a
float64 gradient check through Conv2d, and the switch (which layers go direct, and that a
direct conv is not fused)."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import functional as F
from gpucnn import models, nn
from gpucnn.backend import cpu, get_backend
from tests.helpers import conv2d_backward_naive, conv2d_naive, gradcheck_module

# (N, C, H, W, F, k, stride, pad)
CASES = [
    (2, 1, 8, 8, 4, 3, 1, 1),  # the seed model's first layer, shrunk
    (1, 1, 7, 9, 3, 3, 2, 1),  # odd sizes, stride 2
    (2, 2, 9, 6, 3, 3, 1, 0),  # two channels, no padding
    (1, 1, 6, 11, 2, 5, 2, 2),  # 5×5, stride 2
    (2, 3, 5, 5, 2, 1, 1, 0),  # 1×1 filters
    (1, 1, 4, 5, 2, 2, 3, 3),  # padding wider than the filter: whole rows of zeros
    (1, 3, 10, 7, 2, 3, 3, 2),  # stride 3, 27 taps
]


def _data(case, dtype, seed=0):
    n, c, h, w, f, k, _, _ = case
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, c, h, w)).astype(dtype)
    wt = g.standard_normal((f, c, k, k)).astype(dtype)
    return x, wt, g.standard_normal(f).astype(dtype)


@pytest.fixture
def direct(monkeypatch):
    """Every layer with at most 32 taps goes direct on the CPU backend."""
    monkeypatch.setattr(cpu, "DIRECT_CONV_MAX_TAPS", 32)


@pytest.mark.parametrize("case", CASES)
def test_kernels_against_naive_loops(case):
    x, w, b = _data(case, np.float64)
    stride, pad = case[6], case[7]
    y = cpu.conv2d_direct_fwd(x, w, b, stride, pad)
    np.testing.assert_allclose(y, conv2d_naive(x, w, b, stride, pad), rtol=1e-12, atol=1e-12)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    dw, db = cpu.conv2d_direct_bwd(dy, x, w.shape[2], stride, pad)
    _, dw_ref, db_ref = conv2d_backward_naive(x, w, dy, stride, pad)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, db_ref, rtol=1e-12, atol=1e-12)
    assert cpu.conv2d_direct_fwd(x, w, None, stride, pad) == pytest.approx(y - b[:, None, None])


@pytest.mark.parametrize("case", CASES[:3])
def test_float32_agrees_with_the_im2col_path(case):
    x, w, b = _data(case, np.float32)
    stride, pad = case[6], case[7]
    y_ref, cache = F.conv2d_forward(x, w, b, stride, pad)  # DIRECT_CONV_MAX_TAPS = 0 here
    assert cache.algorithm == "im2col"
    y = cpu.conv2d_direct_fwd(x, w, b, stride, pad)
    assert y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    _, dw_ref, db_ref = F.conv2d_backward(dy, cache, need_dx=False)
    dw, db = cpu.conv2d_direct_bwd(dy, x, w.shape[2], stride, pad)
    assert dw.dtype == db.dtype == np.float32
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=1e-4)


def test_strided_inputs_are_read_as_their_values():
    x, w, b = _data(CASES[0], np.float64)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # not C-contiguous
    np.testing.assert_array_equal(
        cpu.conv2d_direct_fwd(xt, w, b, 1, 1), cpu.conv2d_direct_fwd(x, w, b, 1, 1)
    )


@pytest.mark.parametrize("case", CASES)
def test_functional_path_goes_direct_and_matches_naive(direct, case):
    x, w, b = _data(case, np.float64)
    stride, pad = case[6], case[7]
    y, cache = F.conv2d_forward(x, w, b, stride, pad)
    assert cache.algorithm == "direct" and cache.x is x  # x kept, no columns
    dy = np.random.default_rng(1).standard_normal(y.shape)
    dx, dw, db = F.conv2d_backward(dy, cache)
    for got, want in zip((y, dx, dw, db), (conv2d_naive(x, w, b, stride, pad),
                         *conv2d_backward_naive(x, w, dy, stride, pad)), strict=True):  # fmt: skip
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    dx, dw, db = F.conv2d_backward(dy, cache, need_dx=False)
    assert dx is None and dw is not None
    dx, dw, db = F.conv2d_backward(dy, cache, need_params=False)
    assert dw is None and db is None and dx is not None
    _, cache = F.conv2d_forward(x, w, None, stride, pad)
    assert F.conv2d_backward(dy, cache)[2] is None  # no bias, no db


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[3]])
def test_gradcheck_through_conv2d(direct, case):
    n, c, h, w, f, k, stride, pad = case
    layer = nn.Conv2d(c, f, k, stride=stride, padding=pad, rng=0)
    layer.bias.data[...] = np.random.default_rng(3).standard_normal(f)
    x = np.random.default_rng(4).standard_normal((n, c, h, w))
    gradcheck_module(layer, x)
    assert layer._cache.algorithm == "direct"


def test_only_layers_within_the_taps_go_direct(monkeypatch):
    be = get_backend("cpu")
    assert not F.goes_direct(be, 1, 3)  # off on this CPU: measured slower
    monkeypatch.setattr(cpu, "DIRECT_CONV_MAX_TAPS", 9)
    assert F.goes_direct(be, 1, 3) and not F.goes_direct(be, 2, 3) and F.goes_direct(be, 4, 1)
    x = np.zeros((1, 2, 5, 5), np.float32)
    _, cache = F.conv2d_forward(x, np.zeros((3, 2, 3, 3), np.float32), None, 1, 1)
    assert cache.algorithm == "im2col"  # 18 taps


def test_a_direct_conv_is_not_fused_and_trains_as_the_fused_model(monkeypatch):
    g = np.random.default_rng(0)
    x, labels = g.standard_normal((4, 1, 28, 28)), g.integers(0, 10, 4)
    grads = []
    for max_taps in (0, 9):
        monkeypatch.setattr(cpu, "DIRECT_CONV_MAX_TAPS", max_taps)
        model = models.seed_cnn(rng=0).to(dtype=np.float64)
        steps = [names for names, _ in model.run_steps()]
        # conv1 fuses only while it goes through im2col; conv2 (288 taps) fuses either way
        first = [("0", "2", "1")] if max_taps == 0 else [("0",), ("2",), ("1",)]
        assert steps[: len(first) + 1] == [*first, ("3", "5", "4")]
        loss = nn.CrossEntropyLoss()
        model.zero_grad()
        loss(model(x), labels)
        model.backward(loss.backward())
        grads.append([p.grad.copy() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
