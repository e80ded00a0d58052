"""Batch normalization over (N, H, W) for each channel c, as in Ioffe & Szegedy (2015).

Train:
    mu = mean(x),  var = mean((x - mu)^2)                 (biased, used to normalize)
    xhat = (x - mu) / sqrt(var + eps)
    y = gamma * xhat + beta
    running_mean <- (1 - momentum) * running_mean + momentum * mu
    running_var  <- (1 - momentum) * running_var  + momentum * var * M / (M - 1)   (unbiased)
Eval: the same with mu, var replaced by the running statistics.

Backward (train), with M = N*H*W elements per channel:
    dbeta = sum(dy),  dgamma = sum(dy * xhat)
    dx = gamma / (M * sqrt(var + eps)) * (M * dy - dbeta - xhat * dgamma)
"""

from __future__ import annotations

from typing import Any

from gpucnn.backend import backend_of
from gpucnn.functional._checks import check_channels, check_float, check_rank

_AXES = (0, 2, 3)


def _c(v: Any) -> Any:
    return v[None, :, None, None]


def batchnorm2d_forward(
    x: Any,
    gamma: Any,
    beta: Any,
    running_mean: Any,
    running_var: Any,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[Any, tuple]:
    """Shape: (N, C, H, W) -> same. In training, updates the running statistics in place."""
    layer = "BatchNorm2d"
    check_rank(layer, x, 4, "(N, C, H, W)")
    check_float(layer, x, like=gamma)
    check_channels(layer, x, gamma.shape[0])
    xp = backend_of(x).xp
    if training:
        m = x.shape[0] * x.shape[2] * x.shape[3]
        if m < 2:
            raise ValueError(
                f"{layer}: training needs more than 1 value per channel to compute a variance, "
                f"got input shape {tuple(x.shape)}"
            )
        mu = x.mean(axis=_AXES)
        var = ((x - _c(mu)) ** 2).mean(axis=_AXES)
        mom = x.dtype.type(momentum)
        running_mean *= 1 - mom
        running_mean += mom * mu
        running_var *= 1 - mom
        running_var += mom * var * x.dtype.type(m / (m - 1))
    else:
        mu, var = running_mean, running_var
    invstd = 1 / xp.sqrt(var + x.dtype.type(eps))
    xhat = (x - _c(mu)) * _c(invstd)
    y = _c(gamma) * xhat + _c(beta)
    return y, (xhat, invstd, gamma, training)


def batchnorm2d_backward(dy: Any, cache: tuple) -> tuple[Any, Any, Any]:
    """Shape: dy (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    xhat, invstd, gamma, training = cache
    dbeta = dy.sum(axis=_AXES)
    dgamma = (dy * xhat).sum(axis=_AXES)
    if not training:  # the statistics are constants in eval mode
        return dy * _c(gamma * invstd), dgamma, dbeta
    m = dy.shape[0] * dy.shape[2] * dy.shape[3]
    scale = _c(gamma * invstd / m)
    dx = scale * (m * dy - _c(dbeta) - xhat * _c(dgamma))
    return dx, dgamma, dbeta
