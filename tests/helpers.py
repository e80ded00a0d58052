"""Test references: central-difference gradients and naive-loop implementations.

The naive functions are written for clarity, straight from each op's formula, one output
element at a time; they are the ground truth the vectorized kernels are checked against.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gpucnn.nn import Module


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / (||a|| + ||b||), 0 when both are 0."""
    num = np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    den = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if den == 0 else float(num / den)


# float32's unit roundoff: a float32 result is within u of the exact value, relatively
F32_UNIT_ROUNDOFF = 2.0**-24


def product_tolerance(a: np.ndarray, b: np.ndarray, ulps: float = 4.0) -> np.ndarray:
    """How far apart two float32 evaluations of ``a @ b`` may be, element by element.

    Two BLAS kernels (or one kernel blocking a narrower product differently, with or without
    FMA) add the same K products a_ik b_kj in different orders. The worst case of a K-term sum
    is 2 K u sum_k |a_ik b_kj|; rounding errors of different terms are independent, though, and
    the difference stays within ``ulps`` × √K × u × sum_k |a_ik b_kj|. Measured with OpenBLAS's
    Haswell and SkylakeX kernels on the products of tests/backend/test_threads.py: at most
    1.25 × √K u sum |ab| (K = 9), 0.01 at K = 3136. A wrong element (another row or column, a
    missed block) is off by O(sum |ab|) and fails by orders of magnitude.
    """
    a64, b64 = np.abs(np.asarray(a, np.float64)), np.abs(np.asarray(b, np.float64))
    k = a64.shape[-1]
    return ulps * np.sqrt(k) * F32_UNIT_ROUNDOFF * (a64 @ b64)


def rounding_tolerance(k: int, scale: float, ulps: float = 4.0) -> float:
    """``ulps`` × √K × u × ``scale``: the float32 rounding two evaluations of a K-term sum of
    size ``scale`` may differ by (see product_tolerance). For a network's outputs, K is its
    longest product and ``scale`` the outputs' size."""
    return float(ulps * np.sqrt(k) * F32_UNIT_ROUNDOFF * scale)


def assert_product_close(got, a, b, want=None, ulps: float = 4.0) -> None:
    """``got`` equals ``want`` (default: ``a @ b`` in float64) to float32 rounding of the
    product ``a @ b`` (product_tolerance), element by element."""
    if want is None:
        want = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    excess = np.abs(got - want) - product_tolerance(a, b, ulps)
    assert not (excess > 0).any(), (
        f"{int((excess > 0).sum())} of {excess.size} elements differ by more than "
        f"{ulps} x sqrt(K) x u x sum|ab| (worst by {float(excess.max()):.3g} beyond it)"
    )


def numerical_grad(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences (f(x + eps e_i) - f(x - eps e_i)) / (2 eps), perturbing x in place."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return grad


def gradcheck_module(
    layer: Module,
    x: np.ndarray,
    seed: int = 0,
    before_forward: Callable[[], None] = lambda: None,
    tol: float = 1e-6,
) -> None:
    """Check dx and every parameter gradient of ``layer`` at ``x`` in float64.

    The scalar is L = sum(layer(x) * R) for a fixed random R, so dL/dy = R exercises every
    output element with a different weight.
    """
    layer.to(dtype=np.float64)
    x = x.astype(np.float64)
    rng = np.random.default_rng(seed)
    before_forward()
    r = rng.standard_normal(layer(x).shape)

    def loss() -> float:
        before_forward()
        return float((layer(x) * r).sum())

    layer.zero_grad()
    before_forward()
    layer(x)
    dx = layer.backward(r.copy())
    err = rel_error(dx, numerical_grad(loss, x))
    assert err < tol, f"{type(layer).__name__}: input gradient relative error {err:.2e}"
    for name, p in layer.named_parameters():
        if not p.requires_grad:
            continue
        num = numerical_grad(loss, p.data)
        err = rel_error(p.grad, num)
        assert err < tol, f"{type(layer).__name__}.{name}: gradient relative error {err:.2e}"


def pad(x: np.ndarray, p: int, value: float = 0.0) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=value)


def conv2d_naive(x, w, b, stride, p):
    """y[n,f,oh,ow] = b[f] + sum_{c,i,j} w[f,c,i,j] * xpad[n,c,oh*S+i,ow*S+j], one at a time."""
    n, c, h, wd = x.shape
    f, _, k, _ = w.shape
    oh, ow = (h + 2 * p - k) // stride + 1, (wd + 2 * p - k) // stride + 1
    xp = pad(x, p)
    y = np.zeros((n, f, oh, ow))
    for ni in range(n):
        for fi in range(f):
            for i in range(oh):
                for j in range(ow):
                    window = xp[ni, :, i * stride : i * stride + k, j * stride : j * stride + k]
                    y[ni, fi, i, j] = (window * w[fi]).sum() + (b[fi] if b is not None else 0)
    return y


def conv2d_backward_naive(x, w, dy, stride, p):
    """Scatter each output gradient back through the window that produced it."""
    n, c, h, wd = x.shape
    f, _, k, _ = w.shape
    xp = pad(x, p)
    dxp, dw = np.zeros_like(xp, dtype=np.float64), np.zeros(w.shape)
    for ni in range(n):
        for fi in range(f):
            for i in range(dy.shape[2]):
                for j in range(dy.shape[3]):
                    sl = (
                        ni,
                        slice(None),
                        slice(i * stride, i * stride + k),
                        slice(j * stride, j * stride + k),
                    )
                    dxp[sl] += w[fi] * dy[ni, fi, i, j]
                    dw[fi] += xp[sl] * dy[ni, fi, i, j]
    dx = dxp[:, :, p : p + h, p : p + wd]
    return dx, dw, dy.sum(axis=(0, 2, 3))


def pool2d_naive(x, k, stride, p, reduce):
    """Apply ``reduce`` (np.max or np.mean) to every k×k window; max pads with -inf, mean with 0."""
    n, c, h, w = x.shape
    oh, ow = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
    xp = pad(x, p, -np.inf if reduce is np.max else 0.0)
    y = np.zeros((n, c, oh, ow))
    for ni in range(n):
        for ci in range(c):
            for i in range(oh):
                for j in range(ow):
                    y[ni, ci, i, j] = reduce(
                        xp[ni, ci, i * stride : i * stride + k, j * stride : j * stride + k]
                    )
    return y
