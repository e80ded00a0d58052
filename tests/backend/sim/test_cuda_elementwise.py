"""The CUDA elementwise, loss, BatchNorm and optimizer kernels agree with the CPU backend.

Sizes are not multiples of the 256-thread block; float32 and float64; NaN and bad labels.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn.backend import cpu
from gpucnn.backend import cuda as gpu

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

DTYPES = [np.float32, np.float64]
SHAPES = [(3, 5, 7), (1, 1), (2, 3, 4, 5), (257,)]


def tol(dtype):
    return {"rtol": 2e-5, "atol": 2e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-13}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_relu(dev, shape, dtype):
    put, get = dev
    g = np.random.default_rng(0)
    x = g.standard_normal(shape).astype(dtype)
    x.flat[0] = np.nan
    y = gpu.relu_fwd(put(x))
    np.testing.assert_array_equal(get(y), cpu.relu_fwd(x))
    assert get(y).dtype == dtype and np.isnan(get(y).flat[0])
    dy = g.standard_normal(shape).astype(dtype)
    np.testing.assert_array_equal(get(gpu.relu_bwd(put(dy), y)), cpu.relu_bwd(dy, get(y)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("shape", SHAPES)
def test_dropout_draws_the_cpu_mask(dev, shape, p, dtype):
    put, get = dev
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    key = 0xDEADBEEF12345
    y = get(gpu.dropout_fwd(put(x), p, key))
    np.testing.assert_array_equal(y, cpu.dropout_fwd(x, p, key))
    assert y.dtype == dtype
    dy = np.ones(shape, dtype)
    dx = gpu.dropout_bwd(put(dy), p, key)
    np.testing.assert_array_equal(get(dx), cpu.dropout_bwd(dy, p, key))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, k", [(1, 3), (5, 10), (300, 2)])
def test_softmax_cross_entropy(dev, n, k, dtype):
    put, get = dev
    g = np.random.default_rng(2)
    z = (g.standard_normal((n, k)) * 5).astype(dtype)
    labels = g.integers(0, k, n)
    loss, grad = gpu.softmax_xent_fwd(put(z), put(labels))
    loss_ref, grad_ref = cpu.softmax_xent_fwd(z, labels)
    assert get(loss).shape == () and get(loss).dtype == dtype
    np.testing.assert_allclose(get(loss), loss_ref, **tol(dtype))
    np.testing.assert_allclose(get(grad), grad_ref, **tol(dtype))


def test_softmax_cross_entropy_bad_label_is_nan_not_a_stray_read(dev):
    put, get = dev
    z = np.zeros((4, 3), np.float32)
    loss, grad = gpu.softmax_xent_fwd(put(z), put(np.array([0, 1, 3, -1])))
    assert np.isnan(get(loss))
    assert np.isnan(get(grad)[2:]).all() and np.isfinite(get(grad)[:2]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 2, 1, 3), (3, 1, 17, 9)])
def test_batchnorm(dev, shape, training, dtype):
    put, get = dev
    g = np.random.default_rng(3)
    c = shape[1]
    x = (g.standard_normal(shape) * 3 + 40).astype(dtype)  # |mean| >> std: the shift matters
    gamma, beta = g.standard_normal(c).astype(dtype), g.standard_normal(c).astype(dtype)
    rm, rv = g.standard_normal(c).astype(dtype), g.uniform(0.5, 2, c).astype(dtype)
    rm_d, rv_d = put(rm.copy()), put(rv.copy())
    y, saved = gpu.batchnorm2d_fwd(put(x), put(gamma), put(beta), rm_d, rv_d, training, 0.1, 1e-5)
    y_ref, saved_ref = cpu.batchnorm2d_fwd(x, gamma, beta, rm, rv, training, 0.1, 1e-5)
    loose = {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else tol(dtype)
    np.testing.assert_allclose(get(y), y_ref, **loose)
    np.testing.assert_allclose(get(rm_d), rm, **loose)  # running statistics, updated in place
    np.testing.assert_allclose(get(rv_d), rv, **loose)
    dy = g.standard_normal(shape).astype(dtype)
    dx, dgamma, dbeta = gpu.batchnorm2d_bwd(put(dy), saved, put(gamma), training)
    dx_ref, dgamma_ref, dbeta_ref = cpu.batchnorm2d_bwd(dy, saved_ref, gamma, training)
    np.testing.assert_allclose(get(dbeta), dbeta_ref, **loose)
    np.testing.assert_allclose(get(dgamma), dgamma_ref, **loose)
    np.testing.assert_allclose(get(dx), dx_ref, **loose)
    assert get(dx).dtype == dtype and get(y).dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_update(dev, amsgrad, dtype):
    put, get = dev
    g = np.random.default_rng(4)
    w, m = g.standard_normal((3, 91)).astype(dtype), g.standard_normal((3, 91)).astype(dtype)
    v, vmax = g.uniform(0, 1, (3, 91)).astype(dtype), g.uniform(0, 1, (3, 91)).astype(dtype)
    grad = g.standard_normal((3, 91)).astype(dtype)
    kw = dict(step_size=1e-2, beta1=0.9, beta2=0.99, bias_correction2=0.05, eps=1e-8,
              weight_decay=1e-3)  # fmt: skip
    dev_arrays = [put(a.copy()) for a in (w, grad, m, v, vmax)]
    gpu.adam_update(*dev_arrays[:4], dev_arrays[4] if amsgrad else None, **kw)
    cpu.adam_update(w, grad, m, v, vmax if amsgrad else None, **kw)
    for got, ref in zip([dev_arrays[i] for i in (0, 2, 3, 4)], (w, m, v, vmax), strict=True):
        np.testing.assert_allclose(get(got), ref, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum, nesterov, first", [(0.0, False, False), (0.9, False, True),
                                                       (0.9, True, False)])  # fmt: skip
def test_sgd_update(dev, momentum, nesterov, first, dtype):
    put, get = dev
    g = np.random.default_rng(5)
    w, grad, buf = (g.standard_normal(300).astype(dtype) for _ in range(3))
    kw = dict(first=first, lr=0.1, momentum=momentum, dampening=0.0, weight_decay=1e-2,
              nesterov=nesterov)  # fmt: skip
    w_d, buf_d = put(w.copy()), put(buf.copy())
    gpu.sgd_update(w_d, put(grad), buf_d if momentum else None, **kw)
    cpu.sgd_update(w, grad, buf if momentum else None, **kw)
    np.testing.assert_allclose(get(w_d), w, **tol(dtype))
    np.testing.assert_allclose(get(buf_d), buf, **tol(dtype))


def test_optimizer_launchers_reject_mismatched_state(dev):
    put, _ = dev
    w = put(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"adam_update: every array must be C-contiguous"):
        gpu.adam_update(w, put(np.zeros(5, np.float32)), w, w, None, step_size=1, beta1=0.9,
                        beta2=0.9, bias_correction2=1, eps=1e-8, weight_decay=0)  # fmt: skip


def test_elementwise_kernels_take_strided_inputs(dev):
    put, get = dev
    x = np.random.default_rng(6).standard_normal((5, 7)).astype(np.float32)
    xt = put(x).T  # a transposed view: not C-contiguous
    np.testing.assert_array_equal(get(gpu.relu_fwd(xt)), cpu.relu_fwd(x.T))
    np.testing.assert_array_equal(get(gpu.dropout_fwd(xt, 0.5, 9)), cpu.dropout_fwd(x.T, 0.5, 9))
