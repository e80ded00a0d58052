"""BatchNorm2d on the GPU: per-channel reductions with atomics, then elementwise kernels.

Reductions run on a 2-D grid: blockIdx.y is the channel c, and the blocks along x split its
M = N*H*W elements; each thread sums its share in registers and adds it to the channel's
accumulator with one atomic. Element j of channel c lives at (n*C + c)*HW + hw, j = n*HW + hw.

The forward statistics are one pass over x shifted by the channel's first element s:
mean = s + sum(x - s)/M, var = sum((x - s)^2)/M - (sum(x - s)/M)^2. Shifting by a value from
the data keeps the subtraction from cancelling catastrophically when |mean| >> std.
Atomic sums are not bit-reproducible from run to run (their order varies).

Kernels take the arrays flattened to 1-D with the channel count c and plane size hw as ints;
every float constant (1, 1/M, eps, momentum, the unbiasing factor) arrives as a scalar of the
data's dtype.
"""

from __future__ import annotations

import functools
import math

from gpucnn.backend.cuda.launch import THREADS, array_module, check, config, flat, stream
from gpucnn.backend.numba_cuda import cuda


@cuda.jit(cache=True)
def batchnorm_stats_fwd_kernel(x, c, hw, m, sums, sumsq):  # pragma: no cover - compiled
    ch = cuda.blockIdx.y
    shift = x[ch * hw]
    s = shift - shift
    q = shift - shift
    for j in range(cuda.grid(1), m, cuda.gridsize(1)):
        v = x[((j // hw) * c + ch) * hw + j % hw] - shift
        s += v
        q += v * v
    cuda.atomic.add(sums, ch, s)
    cuda.atomic.add(sumsq, ch, q)


@cuda.jit(cache=True)
def batchnorm_finalize_fwd_kernel(
    x, hw, sums, sumsq, one, inv_m, eps, momentum, unbias, mean, invstd, running_mean, running_var
):  # pragma: no cover - compiled
    ch = cuda.grid(1)
    if ch < sums.size:
        mu_s = sums[ch] * inv_m  # the mean of the shifted values
        var = sumsq[ch] * inv_m - mu_s * mu_s
        var = var if var > 0 else mu_s - mu_s  # rounding can leave it a hair below 0
        mu = x[ch * hw] + mu_s
        mean[ch] = mu
        invstd[ch] = one / math.sqrt(var + eps)
        running_mean[ch] += momentum * (mu - running_mean[ch])
        running_var[ch] += momentum * (var * unbias - running_var[ch])


@cuda.jit(cache=True)
def batchnorm_fwd_kernel(x, c, hw, mean, invstd, gamma, beta, y):  # pragma: no cover - compiled
    for e in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        ch = (e // hw) % c
        y[e] = gamma[ch] * ((x[e] - mean[ch]) * invstd[ch]) + beta[ch]


@cuda.jit(cache=True)
def batchnorm_stats_bwd_kernel(dy, x, c, hw, m, mean, invstd, dgamma, dbeta):  # pragma: no cover
    ch = cuda.blockIdx.y
    mu, inv = mean[ch], invstd[ch]
    sb = mu - mu
    sg = mu - mu
    for j in range(cuda.grid(1), m, cuda.gridsize(1)):
        e = ((j // hw) * c + ch) * hw + j % hw
        sb += dy[e]
        sg += dy[e] * ((x[e] - mu) * inv)
    cuda.atomic.add(dbeta, ch, sb)
    cuda.atomic.add(dgamma, ch, sg)


@cuda.jit(cache=True)
def batchnorm_bwd_kernel(
    dy, x, c, hw, fm, mean, invstd, gamma, dgamma, dbeta, training, dx
):  # pragma: no cover - compiled
    for e in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        ch = (e // hw) % c
        g = gamma[ch] * invstd[ch]
        if training:  # fm: M as a float of the data's dtype
            xhat = (x[e] - mean[ch]) * invstd[ch]
            dx[e] = g / fm * (fm * dy[e] - dbeta[ch] - xhat * dgamma[ch])
        else:
            dx[e] = g * dy[e]


@functools.lru_cache(maxsize=256)
def _channel_grid(c: int, m: int) -> tuple[tuple[int, int], int]:
    """Blocks (along the elements of a channel, channels) for the per-channel reductions."""
    return (max(1, min(-(-m // THREADS), max(1, 1024 // c))), c), THREADS


def batchnorm2d_fwd(x, gamma, beta, running_mean, running_var, training, momentum, eps):
    """Normalize per channel; in training, update the running statistics in place (3 launches:
    reduce, finalize, normalize). Shape: (N, C, H, W) -> y and what backward needs."""
    check("batchnorm2d", x, 4)
    xp = array_module(x)
    n, c, h, w = x.shape
    hw, m = h * w, n * h * w
    dt = x.dtype.type
    if training:
        sums, sumsq = xp.zeros(c, dtype=x.dtype), xp.zeros(c, dtype=x.dtype)
        grid, threads = _channel_grid(c, m)
        batchnorm_stats_fwd_kernel[grid, threads, stream()](flat(x), c, hw, m, sums, sumsq)
        mean, invstd = xp.empty(c, dtype=x.dtype), xp.empty(c, dtype=x.dtype)
        batchnorm_finalize_fwd_kernel[config(c)](
            flat(x),
            hw,
            sums,
            sumsq,
            dt(1),
            dt(1 / m),
            dt(eps),
            dt(momentum),
            dt(m / (m - 1)),
            mean,
            invstd,
            running_mean,
            running_var,
        )
    else:
        mean, invstd = running_mean, 1 / xp.sqrt(running_var + dt(eps))
    y = xp.empty(x.shape, dtype=x.dtype)
    batchnorm_fwd_kernel[config(x.size)](flat(x), c, hw, mean, invstd, gamma, beta, flat(y))
    return y, (x, mean, invstd)


def batchnorm2d_bwd(dy, saved, gamma, training):
    """Shape: dy (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,); 2 launches."""
    check("batchnorm2d_bwd", dy, 4)
    x, mean, invstd = saved
    xp = array_module(dy)
    n, c, h, w = dy.shape
    hw, m = h * w, n * h * w
    dgamma, dbeta = xp.zeros(c, dtype=dy.dtype), xp.zeros(c, dtype=dy.dtype)
    grid, threads = _channel_grid(c, m)
    batchnorm_stats_bwd_kernel[grid, threads, stream()](
        flat(dy), flat(x), c, hw, m, mean, invstd, dgamma, dbeta
    )
    dx = xp.empty(dy.shape, dtype=dy.dtype)
    batchnorm_bwd_kernel[config(dy.size)](
        flat(dy),
        flat(x),
        c,
        hw,
        dy.dtype.type(m),
        mean,
        invstd,
        gamma,
        dgamma,
        dbeta,
        training,
        flat(dx),
    )
    return dx, dgamma, dbeta
