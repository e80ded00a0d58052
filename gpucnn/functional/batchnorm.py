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

from typing import Any, NamedTuple

from gpucnn.backend import backend_of
from gpucnn.functional.checks import check_cache, check_channels, check_float, check_rank
from gpucnn.grad_mode import kept


class BatchNormCache(NamedTuple):
    """What batchnorm2d_backward needs."""

    # the backend kernel's own record for its backward, read only by that backend's
    # batchnorm2d_bwd (the CPU's: xhat, invstd, M; CUDA's: x, mean, invstd)
    saved: tuple
    gamma: Any  # (C,)
    training: bool  # batch statistics (a gradient flows through them) or the running ones


def batchnorm2d_forward(
    x: Any,
    gamma: Any,
    beta: Any,
    running_mean: Any,
    running_var: Any,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[Any, BatchNormCache | None]:
    """Shape: (N, C, H, W) -> same. In training, updates the running statistics in place."""
    layer = "BatchNorm2d"
    check_rank(layer, x, 4, "(N, C, H, W)")
    check_float(layer, x, like=gamma)
    check_channels(layer, x, gamma.shape[0])
    if training and x.shape[0] * x.shape[2] * x.shape[3] < 2:
        raise ValueError(
            f"{layer}: training needs more than 1 value per channel to compute a variance, "
            f"got input shape {tuple(x.shape)}"
        )
    y, saved = backend_of(x).kernels.batchnorm2d_fwd(
        x, gamma, beta, running_mean, running_var, training, momentum, eps
    )
    return y, kept(BatchNormCache(saved, gamma, training))


def batchnorm2d_backward(dy: Any, cache: BatchNormCache) -> tuple[Any, Any, Any]:
    """Shape: dy (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    c = check_cache("BatchNorm2d", cache, BatchNormCache)
    return backend_of(dy).kernels.batchnorm2d_bwd(dy, c.saved, c.gamma, c.training)
