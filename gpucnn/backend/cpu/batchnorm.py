"""BatchNorm2d on the CPU; the equations are in gpucnn.functional.batchnorm, and the CUDA twin
(per-channel reduction kernels) is cuda/batchnorm.py.

One Numba kernel per pass, each over a range of the channels (gpucnn.backend.cpu.threads
splits the channels over the cores): forward reads x twice (the mean, then the squared
deviations from it: two passes, as NumPy's mean and var, so the variance does not cancel) and
writes xhat and y in a third; backward reads dy and xhat once for dbeta and dgamma and once
more for dx. Sums accumulate in float64; everything else stays in x's dtype, as the NumPy
expressions this replaces computed it.

A batch split into shards on CPU threads normalizes by the whole batch's statistics through
gpucnn.train.sharded, which owns that exchange; these kernels see one whole batch.
"""

from __future__ import annotations

import numba
import numpy as np

from gpucnn.backend.cpu import threads


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _stats(x, mean, var, c0, c1):  # pragma: no cover - compiled
    nn, _, hw = x.shape
    m = nn * hw
    for c in range(c0, c1):
        s = 0.0  # float64
        for n in range(nn):
            plane = x[n, c]
            for i in range(hw):
                s += plane[i]
        mu = s / m
        ss = 0.0
        for n in range(nn):
            plane = x[n, c]
            for i in range(hw):
                d = plane[i] - mu
                ss += d * d
        mean[c] = mu
        var[c] = ss / m


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _normalize(x, mu, invstd, gamma, beta, xhat, y, c0, c1):  # pragma: no cover - compiled
    nn, _, hw = x.shape
    for c in range(c0, c1):
        mc, sc, gc, bc = mu[c], invstd[c], gamma[c], beta[c]
        for n in range(nn):
            src, xh, dst = x[n, c], xhat[n, c], y[n, c]
            for i in range(hw):
                v = (src[i] - mc) * sc
                xh[i] = v
                dst[i] = gc * v + bc


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _grad_sums(dy, xhat, dbeta, dgamma, c0, c1):  # pragma: no cover - compiled
    nn, _, hw = dy.shape
    for c in range(c0, c1):
        sb = 0.0  # float64
        sg = 0.0
        for n in range(nn):
            g, xh = dy[n, c], xhat[n, c]
            for i in range(hw):
                sb += g[i]
                sg += g[i] * xh[i]
        dbeta[c] = sb
        dgamma[c] = sg


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _input_grad(dy, xhat, scale, mdt, dbeta, dgamma, dx, c0, c1):  # pragma: no cover - compiled
    nn, _, hw = dy.shape
    for c in range(c0, c1):
        sc, db, dg = scale[c], dbeta[c], dgamma[c]
        for n in range(nn):
            g, xh, dst = dy[n, c], xhat[n, c], dx[n, c]
            for i in range(hw):
                dst[i] = sc * (mdt * g[i] - db - xh[i] * dg)


def _per_channel(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return np.ascontiguousarray(x).reshape(n, c, h * w)


def _split(kernel, x3: np.ndarray, *args) -> None:
    threads.split(kernel, x3.shape[1], x3, *args, grain=threads.grain(x3.shape[0] * x3.shape[2]))


def batchnorm2d_fwd(x, gamma, beta, running_mean, running_var, training, momentum, eps):
    """Normalize per channel; in training, update the running statistics in place.

    Shape: (N, C, H, W) -> y (N, C, H, W) and what backward needs.
    """
    dt = x.dtype.type
    x3 = _per_channel(x)
    m = x3.shape[0] * x3.shape[2]
    if training:
        mean = np.empty(x3.shape[1], np.float64)
        var = np.empty(x3.shape[1], np.float64)
        _split(_stats, x3, mean, var)
        mu, var = mean.astype(x.dtype), var.astype(x.dtype)
        running_mean *= 1 - dt(momentum)
        running_mean += dt(momentum) * mu
        running_var *= 1 - dt(momentum)
        running_var += dt(momentum) * var * dt(m / (m - 1))
    else:
        mu, var = running_mean, running_var
    invstd = 1 / np.sqrt(var + dt(eps))
    xhat = np.empty_like(x3)
    y = np.empty_like(x3)
    _split(_normalize, x3, mu, invstd, gamma, beta, xhat, y)
    return y.reshape(x.shape), (xhat, invstd, m)


def batchnorm2d_bwd(dy, saved, gamma, training):
    """Shape: dy (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    xhat, invstd, m = saved
    dy3 = _per_channel(dy)
    dbeta = np.empty(dy3.shape[1], np.float64)
    dgamma = np.empty(dy3.shape[1], np.float64)
    _split(_grad_sums, dy3, xhat, dbeta, dgamma)
    dbeta, dgamma = dbeta.astype(dy.dtype), dgamma.astype(dy.dtype)
    if not training:  # the statistics are constants in eval mode
        return dy * (gamma * invstd)[None, :, None, None], dgamma, dbeta
    dx = np.empty_like(dy3)
    scale = gamma * invstd / dy.dtype.type(m)
    _split(_input_grad, dy3, xhat, scale, dy.dtype.type(m), dbeta, dgamma, dx)
    return dx.reshape(dy.shape), dgamma, dbeta
