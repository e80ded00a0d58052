"""Max / average / global pooling on the GPU: Numba CUDA kernels and their launchers (the CPU
twins are in gpucnn.backend.cpu.pool).

Each kernel holds index math only and runs one thread per output element (per plane for
global pooling) in a grid-stride loop. The backward kernels gather (each input pixel sums the
windows that saw it) instead of scattering with atomics, so results are deterministic. No
float literal appears in a kernel: zero and scale factors arrive as arguments of the array's
dtype, so float32 stays float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpucnn.backend.cuda.launch import THREADS, array_module, blocks, check, flat, out_size
from gpucnn.backend.numba_cuda import cuda


@cuda.jit(cache=True)
def maxpool_fwd_kernel(x, k, stride, pad, zero, y, arg):  # pragma: no cover - device code
    planes, h, w = x.shape
    _, oh, ow = y.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, planes * oh * ow, step):
        p, oy, ox = e // (oh * ow), (e // ow) % oh, e % ow
        best = zero
        won = -1
        for i in range(k):
            hy = oy * stride - pad + i
            if hy < 0 or hy >= h:
                continue
            for j in range(k):
                wx = ox * stride - pad + j
                if wx < 0 or wx >= w:
                    continue
                v = x[p, hy, wx]
                # the first element, a larger one, or a NaN (which then stays) wins
                if won < 0 or v > best or (v != v and best == best):
                    best = v
                    won = i * k + j
        y[p, oy, ox] = best
        arg[p, oy, ox] = won


@cuda.jit(cache=True)
def maxpool_bwd_kernel(dy, arg, k, stride, pad, zero, dx):  # pragma: no cover - device code
    planes, h, w = dx.shape
    _, oh, ow = dy.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, planes * h * w, step):
        p, hy, wx = e // (h * w), (e // w) % h, e % w
        acc = zero
        for i in range(k):
            t = hy + pad - i
            if t < 0 or t % stride != 0 or t // stride >= oh:
                continue
            for j in range(k):
                u = wx + pad - j
                if u < 0 or u % stride != 0 or u // stride >= ow:
                    continue
                if arg[p, t // stride, u // stride] == i * k + j:
                    acc += dy[p, t // stride, u // stride]
        dx[p, hy, wx] = acc


@cuda.jit(cache=True)
def avgpool_fwd_kernel(x, k, stride, pad, zero, scale, y):  # pragma: no cover - device code
    planes, h, w = x.shape
    _, oh, ow = y.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, planes * oh * ow, step):
        p, oy, ox = e // (oh * ow), (e // ow) % oh, e % ow
        acc = zero
        for i in range(k):
            hy = oy * stride - pad + i
            if hy < 0 or hy >= h:
                continue
            for j in range(k):
                wx = ox * stride - pad + j
                if 0 <= wx < w:
                    acc += x[p, hy, wx]
        y[p, oy, ox] = acc * scale


@cuda.jit(cache=True)
def avgpool_bwd_kernel(dy, k, stride, pad, zero, scale, dx):  # pragma: no cover - device code
    planes, h, w = dx.shape
    _, oh, ow = dy.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, planes * h * w, step):
        p, hy, wx = e // (h * w), (e // w) % h, e % w
        acc = zero
        for i in range(k):
            t = hy + pad - i
            if t < 0 or t % stride != 0 or t // stride >= oh:
                continue
            for j in range(k):
                u = wx + pad - j
                if u < 0 or u % stride != 0 or u // stride >= ow:
                    continue
                acc += dy[p, t // stride, u // stride]
        dx[p, hy, wx] = acc * scale


@cuda.jit(cache=True)
def global_pool_fwd_kernel(x, is_max, inv_hw, y, arg):  # pragma: no cover - device code
    # x: (P, HW) planes; one thread per plane
    planes, hw = x.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for p in range(start, planes, step):
        best = x[p, 0]
        won = 0
        nan_at = -1
        acc = best - best
        for q in range(hw):
            v = x[p, q]
            acc += v
            t = v > best  # strictly: the first of equal maxima wins
            best = v if t else best
            won = q if t else won
            if v != v and nan_at < 0:
                nan_at = q
        if is_max:
            if nan_at >= 0:  # the first NaN wins, as numpy.argmax
                won = nan_at
                best = x[p, nan_at]
            y[p] = best
            arg[p] = won
        else:
            y[p] = acc * inv_hw


@cuda.jit(cache=True)
def global_pool_bwd_kernel(dy, arg, is_max, inv_hw, zero, dx):  # pragma: no cover - device code
    # dx: (P, HW); one thread per element of dx
    planes, hw = dx.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, planes * hw, step):
        p, q = e // hw, e % hw
        if is_max:
            dx[p, q] = dy[p] if q == arg[p] else zero
        else:
            dx[p, q] = dy[p] * inv_hw


def _planes(a: Any) -> Any:
    n, c, h, w = a.shape
    return a.reshape(n * c, h, w)


def maxpool2d_fwd(x: Any, k: int, stride: int, pad: int) -> tuple[Any, Any]:
    """Shape: (N, C, H, W) -> y (N, C, OH, OW), argmax (N, C, OH, OW) int32 in [0, k*k)."""
    check("maxpool2d", x, 4)
    n, c, h, w = x.shape
    oh, ow = out_size(h, k, stride, pad), out_size(w, k, stride, pad)
    xp = array_module(x)
    y = xp.empty((n * c, oh, ow), dtype=x.dtype)
    arg = xp.empty((n * c, oh, ow), dtype=np.int32)
    maxpool_fwd_kernel[blocks(y.size), THREADS](_planes(x), k, stride, pad, x.dtype.type(0), y, arg)
    return y.reshape(n, c, oh, ow), arg.reshape(n, c, oh, ow)


def maxpool2d_bwd(dy: Any, arg: Any, x_shape: tuple, k: int, stride: int, pad: int) -> Any:
    """Shape: dy (N, C, OH, OW) -> dx (N, C, H, W); each pixel gathers the windows it won."""
    check("maxpool2d_bwd", dy, 4)
    n, c, h, w = x_shape
    dx = array_module(dy).empty((n * c, h, w), dtype=dy.dtype)
    maxpool_bwd_kernel[blocks(dx.size), THREADS](
        _planes(dy), _planes(arg), k, stride, pad, dy.dtype.type(0), dx
    )
    return dx.reshape(x_shape)


def avgpool2d_fwd(x: Any, k: int, stride: int, pad: int) -> Any:
    """Shape: (N, C, H, W) -> (N, C, OH, OW); padded zeros count (count_include_pad)."""
    check("avgpool2d", x, 4)
    n, c, h, w = x.shape
    oh, ow = out_size(h, k, stride, pad), out_size(w, k, stride, pad)
    y = array_module(x).empty((n * c, oh, ow), dtype=x.dtype)
    avgpool_fwd_kernel[blocks(y.size), THREADS](
        _planes(x), k, stride, pad, x.dtype.type(0), x.dtype.type(1.0 / (k * k)), y
    )
    return y.reshape(n, c, oh, ow)


def avgpool2d_bwd(dy: Any, x_shape: tuple, k: int, stride: int, pad: int) -> Any:
    """Shape: (N, C, OH, OW) -> (N, C, H, W)."""
    check("avgpool2d_bwd", dy, 4)
    n, c, h, w = x_shape
    dx = array_module(dy).empty((n * c, h, w), dtype=dy.dtype)
    avgpool_bwd_kernel[blocks(dx.size), THREADS](
        _planes(dy), k, stride, pad, dy.dtype.type(0), dy.dtype.type(1.0 / (k * k)), dx
    )
    return dx.reshape(x_shape)


def _global_fwd(x: Any, is_max: bool) -> tuple[Any, Any]:
    check("global_pool", x, 4, contiguous=False)
    xp = array_module(x)
    n, c, h, w = x.shape
    y = xp.empty(n * c, dtype=x.dtype)
    arg = xp.empty(n * c if is_max else 1, dtype=np.int32)
    global_pool_fwd_kernel[blocks(n * c), THREADS](
        x.reshape(n * c, h * w), is_max, x.dtype.type(1.0 / (h * w)), y, arg
    )
    return y.reshape(n, c), arg.reshape(n, c) if is_max else None


def _global_bwd(dy: Any, arg: Any, x_shape: tuple) -> Any:
    check("global_pool_bwd", dy, 2, contiguous=False)
    xp = array_module(dy)
    n, c, h, w = x_shape
    dx = xp.empty((n * c, h * w), dtype=dy.dtype)
    is_max = arg is not None
    global_pool_bwd_kernel[blocks(dx.size), THREADS](
        flat(dy),
        flat(arg) if is_max else xp.zeros(1, dtype=np.int32),
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
