"""BatchNorm2d on the CPU in NumPy; the equations are in gpucnn.functional.batchnorm, and the
CUDA twin (per-channel reduction kernels) is cuda/batchnorm.py.

A batch split into shards on CPU threads normalizes by the whole batch's statistics through
gpucnn.train.sharded, which owns that exchange; these kernels see one whole batch.
"""

from __future__ import annotations

import numpy as np

_AXES = (0, 2, 3)


def _c(v: np.ndarray) -> np.ndarray:
    return v[None, :, None, None]


def batchnorm2d_fwd(x, gamma, beta, running_mean, running_var, training, momentum, eps):
    """Normalize per channel; in training, update the running statistics in place.

    Shape: (N, C, H, W) -> y (N, C, H, W) and what backward needs.
    """
    dt = x.dtype.type
    m = x.shape[0] * x.shape[2] * x.shape[3]
    if training:
        mu = x.mean(axis=_AXES)
        var = ((x - _c(mu)) ** 2).mean(axis=_AXES)
        running_mean *= 1 - dt(momentum)
        running_mean += dt(momentum) * mu
        running_var *= 1 - dt(momentum)
        running_var += dt(momentum) * var * dt(m / (m - 1))
    else:
        mu, var = running_mean, running_var
    invstd = 1 / np.sqrt(var + dt(eps))
    xhat = (x - _c(mu)) * _c(invstd)
    return _c(gamma) * xhat + _c(beta), (xhat, invstd, m)


def batchnorm2d_bwd(dy, saved, gamma, training):
    """Shape: dy (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    xhat, invstd, m = saved
    dbeta = dy.sum(axis=_AXES)
    dgamma = (dy * xhat).sum(axis=_AXES)
    if not training:  # the statistics are constants in eval mode
        return dy * _c(gamma * invstd), dgamma, dbeta
    dx = _c(gamma * invstd / m) * (m * dy - _c(dbeta) - xhat * _c(dgamma))
    return dx, dgamma, dbeta
