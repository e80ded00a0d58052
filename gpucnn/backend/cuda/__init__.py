"""CUDA kernels and their launchers: the same functions, names and shapes as gpucnn.backend.cpu.

Launchers check shapes, dtype and contiguity, allocate outputs with the input's array module
(CuPy on a GPU; NumPy under NUMBA_ENABLE_CUDASIM=1) and launch one thread per output element
(grid-stride loops, at most MAX_BLOCKS blocks).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpucnn.backend import formulas
from gpucnn.backend.cuda import batchnorm as _bn
from gpucnn.backend.cuda import elementwise as _ew
from gpucnn.backend.cuda import optim as _optim
from gpucnn.backend.cuda import warp as _warp
from gpucnn.backend.cuda import window as _k

THREADS = 256
MAX_BLOCKS = 8192


def _xp(a: Any) -> Any:
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def _blocks(n: int) -> int:
    return max(1, min(MAX_BLOCKS, -(-n // THREADS)))


def _check(name: str, a: Any, ndim: int, contiguous: bool = True) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(a.shape)}")
    if np.dtype(a.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"{name}: expected float32 (or float64), got {a.dtype}")
    if contiguous and not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array")


def _out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def im2col(x: Any, k: int, stride: int, pad: int, pad_value: float = 0.0) -> Any:
    """Shape: (N, C, H, W) -> (C*k*k, N*OH*OW); rows (c, i, j), columns (n, oh, ow)."""
    _check("im2col", x, 4)
    n, c, h, w = x.shape
    oh, ow = _out(h, k, stride, pad), _out(w, k, stride, pad)
    cols = _xp(x).empty((c * k * k, n * oh * ow), dtype=x.dtype)
    _k.im2col_fwd_kernel[_blocks(cols.size), THREADS](
        x, k, stride, pad, x.dtype.type(pad_value), cols
    )
    return cols


def col2im(
    cols: Any, x_shape: tuple, k: int, stride: int, pad: int, overwrite_cols: bool = False
) -> Any:
    """Shape: (C*k*k, N*OH*OW) -> (N, C, H, W), summing overlaps (the adjoint of im2col).

    The gather kernel only reads ``cols``; ``overwrite_cols`` is accepted for the CPU twin's
    sake.
    """
    _check("col2im", cols, 2)
    out = _xp(cols).empty(x_shape, dtype=cols.dtype)
    _k.col2im_bwd_kernel[_blocks(out.size), THREADS](cols, k, stride, pad, cols.dtype.type(0), out)
    return out


def _planes(a: Any) -> Any:
    n, c, h, w = a.shape
    return a.reshape(n * c, h, w)


def maxpool2d_fwd(x: Any, k: int, stride: int, pad: int) -> tuple[Any, Any]:
    """Shape: (N, C, H, W) -> y (N, C, OH, OW), argmax (N, C, OH, OW) int32 in [0, k*k)."""
    _check("maxpool2d", x, 4)
    n, c, h, w = x.shape
    oh, ow = _out(h, k, stride, pad), _out(w, k, stride, pad)
    xp = _xp(x)
    y = xp.empty((n * c, oh, ow), dtype=x.dtype)
    arg = xp.empty((n * c, oh, ow), dtype=np.int32)
    _k.maxpool_fwd_kernel[_blocks(y.size), THREADS](
        _planes(x), k, stride, pad, x.dtype.type(0), y, arg
    )
    return y.reshape(n, c, oh, ow), arg.reshape(n, c, oh, ow)


def maxpool2d_bwd(dy: Any, arg: Any, x_shape: tuple, k: int, stride: int, pad: int) -> Any:
    """Shape: dy (N, C, OH, OW) -> dx (N, C, H, W); each pixel gathers the windows it won."""
    _check("maxpool2d_bwd", dy, 4)
    n, c, h, w = x_shape
    dx = _xp(dy).empty((n * c, h, w), dtype=dy.dtype)
    _k.maxpool_bwd_kernel[_blocks(dx.size), THREADS](
        _planes(dy), _planes(arg), k, stride, pad, dy.dtype.type(0), dx
    )
    return dx.reshape(x_shape)


def avgpool2d_fwd(x: Any, k: int, stride: int, pad: int) -> Any:
    """Shape: (N, C, H, W) -> (N, C, OH, OW); padded zeros count (count_include_pad)."""
    _check("avgpool2d", x, 4)
    n, c, h, w = x.shape
    oh, ow = _out(h, k, stride, pad), _out(w, k, stride, pad)
    y = _xp(x).empty((n * c, oh, ow), dtype=x.dtype)
    _k.avgpool_fwd_kernel[_blocks(y.size), THREADS](
        _planes(x), k, stride, pad, x.dtype.type(0), x.dtype.type(1.0 / (k * k)), y
    )
    return y.reshape(n, c, oh, ow)


def avgpool2d_bwd(dy: Any, x_shape: tuple, k: int, stride: int, pad: int) -> Any:
    """Shape: (N, C, OH, OW) -> (N, C, H, W)."""
    _check("avgpool2d_bwd", dy, 4)
    n, c, h, w = x_shape
    dx = _xp(dy).empty((n * c, h, w), dtype=dy.dtype)
    _k.avgpool_bwd_kernel[_blocks(dx.size), THREADS](
        _planes(dy), k, stride, pad, dy.dtype.type(0), dy.dtype.type(1.0 / (k * k)), dx
    )
    return dx.reshape(x_shape)


def _global_fwd(x: Any, is_max: bool) -> tuple[Any, Any]:
    _check("global_pool", x, 4, contiguous=False)
    xp = _xp(x)
    n, c, h, w = x.shape
    y = xp.empty(n * c, dtype=x.dtype)
    arg = xp.empty(n * c if is_max else 1, dtype=np.int32)
    _k.global_pool_fwd_kernel[_blocks(n * c), THREADS](
        x.reshape(n * c, h * w), is_max, x.dtype.type(1.0 / (h * w)), y, arg
    )
    return y.reshape(n, c), arg.reshape(n, c) if is_max else None


def _global_bwd(dy: Any, arg: Any, x_shape: tuple) -> Any:
    _check("global_pool_bwd", dy, 2, contiguous=False)
    xp = _xp(dy)
    n, c, h, w = x_shape
    dx = xp.empty((n * c, h * w), dtype=dy.dtype)
    is_max = arg is not None
    _k.global_pool_bwd_kernel[_blocks(dx.size), THREADS](
        _flat(dy),
        _flat(arg) if is_max else xp.zeros(1, dtype=np.int32),
        is_max,
        dy.dtype.type(1.0 / (h * w)),
        dy.dtype.type(0),
        dx,
    )
    return dx.reshape(x_shape)


def global_avgpool2d_fwd(x: Any) -> Any:
    """y[n, c] = mean of x[n, c] over H, W (one thread per plane). Shape: (N, C, H, W) -> (N, C)."""
    return _global_fwd(x, False)[0]


def global_avgpool2d_bwd(dy: Any, x_shape: tuple) -> Any:
    """Every position gets dy / (H*W). Shape: (N, C) -> (N, C, H, W)."""
    return _global_bwd(dy, None, x_shape)


def global_maxpool2d_fwd(x: Any) -> tuple[Any, Any]:
    """Max over each plane and its flat position (first of ties; a NaN wins).

    Shape: (N, C, H, W) -> y (N, C), argmax (N, C) int32."""
    return _global_fwd(x, True)


def global_maxpool2d_bwd(dy: Any, arg: Any, x_shape: tuple) -> Any:
    """The gradient goes to each plane's maximum. Shape: (N, C) -> (N, C, H, W)."""
    return _global_bwd(dy, arg, x_shape)


def affine_warp(x: Any, inv: Any, shift: Any) -> Any:
    """Shape: x (N, C, H, W), inv (N, 4), shift (N, 2) float32 -> (N, C, H, W); see the CPU twin."""
    _check("affine_warp", x, 4)
    if tuple(inv.shape) != (x.shape[0], 4) or tuple(shift.shape) != (x.shape[0], 2):
        raise ValueError(
            f"affine_warp: expected inv ({x.shape[0]}, 4) and shift ({x.shape[0]}, 2), "
            f"got {tuple(inv.shape)} and {tuple(shift.shape)}"
        )
    xp = _xp(x)
    n, c, h, w = x.shape
    dt = x.dtype.type
    out = xp.empty(x.shape, dtype=x.dtype)
    _warp.affine_warp_fwd_kernel[_blocks(out.size), THREADS](
        x,
        inv.astype(x.dtype),
        shift.astype(x.dtype),
        xp.arange(w, dtype=x.dtype),
        xp.arange(h, dtype=x.dtype),
        dt((w - 1) / 2),
        dt((h - 1) / 2),
        dt(0),
        dt(1),
        out,
    )
    return out


def _flat(a: Any) -> Any:
    """A 1-D view of a contiguous array (of an output we allocated), or a 1-D contiguous copy
    of a strided input: elementwise kernels take any layout."""
    return a.reshape(a.size)


def relu_fwd(x: Any) -> Any:
    """y = max(x, 0), NaN kept. Shape: any -> same."""
    _check("relu", x, x.ndim, contiguous=False)
    y = _xp(x).empty(x.shape, dtype=x.dtype)
    _ew.relu_fwd_kernel[_blocks(x.size), THREADS](_flat(x), x.dtype.type(0), _flat(y))
    return y


def relu_bwd(dy: Any, y: Any) -> Any:
    """dx = dy where y > 0, else 0. Shape: any -> same."""
    _check("relu_bwd", dy, dy.ndim, contiguous=False)
    dx = _xp(dy).empty(dy.shape, dtype=dy.dtype)
    _ew.relu_bwd_kernel[_blocks(dy.size), THREADS](_flat(dy), _flat(y), dy.dtype.type(0), _flat(dx))
    return dx


def dropout_fwd(x: Any, p: float, key: int, start: int = 0) -> Any:
    """Inverted dropout, the mask drawn under ``key`` for elements numbered from ``start`` (the
    CPU twin draws the same mask)."""
    _check("dropout", x, x.ndim, contiguous=False)
    threshold, scale = formulas.dropout_constants(p)
    out = _xp(x).empty(x.shape, dtype=x.dtype)
    _ew.dropout_fwd_kernel[_blocks(x.size), THREADS](
        _flat(x),
        np.uint64(key),
        start,
        threshold,
        x.dtype.type(scale),
        x.dtype.type(0),
        _flat(out),
    )
    return out


def dropout_bwd(dy: Any, p: float, key: int, start: int = 0) -> Any:
    """dx = dy * mask / (1 - p), the mask recomputed from ``key``."""
    return dropout_fwd(dy, p, key, start)


def softmax_xent_fwd(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Mean softmax cross-entropy and its gradient in one launch (one thread per row).

    Shape: logits (N, K), labels (N,) -> loss (0-d), dlogits (N, K) = (softmax - onehot) / N.
    A label outside [0, K) makes the loss NaN (checked on the device, without a sync).
    """
    _check("softmax_xent", logits, 2)
    xp = _xp(logits)
    n = logits.shape[0]
    dt = logits.dtype.type
    total = xp.zeros(1, dtype=logits.dtype)
    grad = xp.empty(logits.shape, dtype=logits.dtype)
    _ew.softmax_xent_fwd_kernel[_blocks(n), THREADS](
        logits, labels.astype(np.int64, copy=False), dt(1 / n), dt(1), dt(np.nan), total, grad
    )
    return total.reshape(()), grad


def _channel_grid(c: int, m: int) -> tuple[tuple[int, int], int]:
    """Blocks (along the elements of a channel, channels) for the per-channel reductions."""
    return (max(1, min(-(-m // THREADS), max(1, 1024 // c))), c), THREADS


def batchnorm2d_fwd(x, gamma, beta, running_mean, running_var, training, momentum, eps):
    """Normalize per channel; in training, update the running statistics in place (3 launches:
    reduce, finalize, normalize). Shape: (N, C, H, W) -> y and what backward needs."""
    _check("batchnorm2d", x, 4)
    xp = _xp(x)
    n, c, h, w = x.shape
    hw, m = h * w, n * h * w
    dt = x.dtype.type
    if training:
        sums, sumsq = xp.zeros(c, dtype=x.dtype), xp.zeros(c, dtype=x.dtype)
        blocks, threads = _channel_grid(c, m)
        _bn.batchnorm_stats_fwd_kernel[blocks, threads](_flat(x), c, hw, m, sums, sumsq)
        mean, invstd = xp.empty(c, dtype=x.dtype), xp.empty(c, dtype=x.dtype)
        _bn.batchnorm_finalize_fwd_kernel[_blocks(c), THREADS](
            _flat(x),
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
    _bn.batchnorm_fwd_kernel[_blocks(x.size), THREADS](
        _flat(x), c, hw, mean, invstd, gamma, beta, _flat(y)
    )
    return y, (x, mean, invstd)


def batchnorm2d_bwd(dy, saved, gamma, training):
    """Shape: dy (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,); 2 launches."""
    _check("batchnorm2d_bwd", dy, 4)
    x, mean, invstd = saved
    xp = _xp(dy)
    n, c, h, w = dy.shape
    hw, m = h * w, n * h * w
    dgamma, dbeta = xp.zeros(c, dtype=dy.dtype), xp.zeros(c, dtype=dy.dtype)
    blocks, threads = _channel_grid(c, m)
    _bn.batchnorm_stats_bwd_kernel[blocks, threads](
        _flat(dy), _flat(x), c, hw, m, mean, invstd, dgamma, dbeta
    )
    dx = xp.empty(dy.shape, dtype=dy.dtype)
    _bn.batchnorm_bwd_kernel[_blocks(dy.size), THREADS](
        _flat(dy),
        _flat(x),
        c,
        hw,
        dy.dtype.type(m),
        mean,
        invstd,
        gamma,
        dgamma,
        dbeta,
        training,
        _flat(dx),
    )
    return dx, dgamma, dbeta


__all__ = [
    "adam_update",
    "sgd_update",
    "relu_fwd",
    "relu_bwd",
    "dropout_fwd",
    "dropout_bwd",
    "softmax_xent_fwd",
    "batchnorm2d_fwd",
    "batchnorm2d_bwd",
    "im2col",
    "col2im",
    "maxpool2d_fwd",
    "maxpool2d_bwd",
    "avgpool2d_fwd",
    "avgpool2d_bwd",
    "global_avgpool2d_fwd",
    "global_avgpool2d_bwd",
    "global_maxpool2d_fwd",
    "global_maxpool2d_bwd",
]


def adam_update(w, g, m, v, vmax, *, step_size, beta1, beta2, bias_correction2, eps, weight_decay):
    """One Adam step for one parameter in one launch, in place (AMSGrad when ``vmax`` is given)."""
    amsgrad = vmax is not None
    formulas.check_same_layout("adam_update", w, g, m, v, *([vmax] if amsgrad else []))
    consts = formulas.adam_constants(
        w.dtype, step_size, beta1, beta2, bias_correction2, eps, weight_decay
    )
    stand_in = _xp(w).empty(1, dtype=w.dtype)  # never read or written
    flat = [a.reshape(-1) for a in (w, g, m, v, vmax if amsgrad else stand_in)]
    _optim.adam_update_kernel[_blocks(w.size), THREADS](*flat, amsgrad, *consts)


def sgd_update(w, g, buf, *, first, lr, momentum, dampening, weight_decay, nesterov):
    """One SGD step for one parameter in one launch, in place (``buf``: momentum buffer or None)."""
    formulas.check_same_layout("sgd_update", w, g, *([buf] if buf is not None else []))
    consts = formulas.sgd_constants(w.dtype, lr, momentum, dampening, weight_decay)
    stand_in = _xp(w).empty(1, dtype=w.dtype)  # never read or written
    flat = [a.reshape(-1) for a in (w, g, buf if buf is not None else stand_in)]
    _optim.sgd_update_kernel[_blocks(w.size), THREADS](*flat, first, *consts, nesterov)
