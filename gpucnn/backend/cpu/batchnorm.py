"""BatchNorm2d on the CPU in NumPy; the equations are in gpucnn.functional.batchnorm, and the
CUDA twin (per-channel reduction kernels) is cuda/batchnorm.py.

``exchange`` serves a batch split into shards (gpucnn.train.parallel): it hands this shard's
per-channel partial results to the other shards and returns every shard's, in shard order.
The statistics are then those of the whole batch. The forward pass combines (count, mean,
sum of squared deviations) with Chan's parallel formula in float64:

    n = sum n_s,  mean = sum n_s mean_s / n,  M2 = sum [M2_s + n_s (mean_s - mean)^2],  var = M2 / n

The backward pass sums dbeta and dgamma over the shards for the input gradient, and returns
this shard's own dgamma and dbeta as the parameter gradients (the shards' sum is the batch's).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_AXES = (0, 2, 3)

Exchange = Callable[[str, tuple], list]


def _c(v: np.ndarray) -> np.ndarray:
    return v[None, :, None, None]


def _batch_stats(x: np.ndarray, exchange: Exchange | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and biased variance per channel, of this array or of the whole sharded batch."""
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mu = x.mean(axis=_AXES)
    if exchange is None:
        return mu, ((x - _c(mu)) ** 2).mean(axis=_AXES), m
    m2 = ((x - _c(mu)) ** 2).sum(axis=_AXES, dtype=np.float64)
    parts = exchange("forward", (m, mu.astype(np.float64), m2))
    n = sum(p[0] for p in parts)
    mean = sum(p[0] * p[1] for p in parts) / n
    total_m2 = sum(p[2] + p[0] * (p[1] - mean) ** 2 for p in parts)
    return mean.astype(x.dtype), (total_m2 / n).astype(x.dtype), n


def batchnorm2d_fwd(
    x, gamma, beta, running_mean, running_var, training, momentum, eps, exchange=None,
    update_running=True,
):  # fmt: skip
    """Normalize per channel; in training, update the running statistics in place (unless
    ``update_running`` is False: one shard of a split batch updates them for all).

    Shape: (N, C, H, W) -> y (N, C, H, W) and what backward needs.
    """
    dt = x.dtype.type
    m = x.shape[0] * x.shape[2] * x.shape[3]
    if training:
        mu, var, m = _batch_stats(x, exchange)
        if update_running:
            running_mean *= 1 - dt(momentum)
            running_mean += dt(momentum) * mu
            running_var *= 1 - dt(momentum)
            running_var += dt(momentum) * var * dt(m / (m - 1))
    else:
        mu, var = running_mean, running_var
    invstd = 1 / np.sqrt(var + dt(eps))
    xhat = (x - _c(mu)) * _c(invstd)
    return _c(gamma) * xhat + _c(beta), (xhat, invstd, m)


def batchnorm2d_bwd(dy, saved, gamma, training, exchange=None):
    """Shape: dy (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    xhat, invstd, m = saved
    dbeta = dy.sum(axis=_AXES)
    dgamma = (dy * xhat).sum(axis=_AXES)
    if not training:  # the statistics are constants in eval mode
        return dy * _c(gamma * invstd), dgamma, dbeta
    dbeta_all, dgamma_all = dbeta, dgamma
    if exchange is not None:  # the input gradient needs the whole batch's sums
        parts = exchange("backward", (dbeta, dgamma))
        dbeta_all = sum(p[0] for p in parts[1:]) + parts[0][0]
        dgamma_all = sum(p[1] for p in parts[1:]) + parts[0][1]
    dx = _c(gamma * invstd / m) * (m * dy - _c(dbeta_all) - xhat * _c(dgamma_all))
    return dx, dgamma, dbeta
