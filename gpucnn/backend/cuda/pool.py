"""Max / average / global pooling on the GPU: Numba CUDA kernels and their launchers (the CPU
twins are in gpucnn.backend.cpu.pool).

Forward kernels run one thread per output element (per plane for global pooling) in a
grid-stride loop; the 2×2, stride-2 max pool (every model here uses it) has its own kernel:
four loads and three selects, no loops and no bounds checks.

Backward, by how the windows lie:
  - stride >= k (windows do not overlap; the 2×2 stride-2 pool): pool_tile_bwd_kernel, one
    thread per stride×stride tile of dx (tile (ty, tx) starts at (ty*stride - pad,
    tx*stride - pad), the origin of window (ty, tx)). The tiles cover every input pixel once,
    so the thread writes its whole tile: max pooling puts dy at the recorded argmax, average
    pooling dy/(k*k) on the window, and every other pixel (the rest of the window, the gap
    between windows when stride > k, the last rows and columns no window reaches) gets zero.
    No memset, no atomics: dx is written once (for max pooling, the CPU's bits).
  - stride < k, max: dx is zeroed, then maxpool_scatter_bwd_kernel, one thread per output
    element, atomically adds dy at its argmax. A pixel that wins two windows gets the same
    bits in either order; one that wins three or more gets its sum in the order the atomics
    land, which varies from run to run (float rounding only).
  - stride < k, average: avgpool_bwd_kernel, one thread per input pixel, sums dy/(k*k) over
    the windows that contain it, in the CPU's order: deterministic.

No float literal appears in a kernel: zero and scale factors arrive as arguments of the
array's dtype, so float32 stays float32. Flat indices are split with two divisions (plane,
then row), never with a modulo.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpucnn.backend import formulas
from gpucnn.backend.cuda.launch import array_module, check, config, flat, out_size
from gpucnn.backend.numba_cuda import cuda

_max4 = cuda.jit(device=True)(formulas.max4_element)


@cuda.jit(device=True, inline=True)
def _smaller(a, b):  # pragma: no cover - device code; Numba's CUDA min() is the iterable one
    return a if a < b else b


@cuda.jit(device=True, inline=True)
def _larger(a, b):  # pragma: no cover - device code
    return a if a > b else b


@cuda.jit(cache=True)
def maxpool_fwd_kernel(x, k, stride, pad, y, arg):  # pragma: no cover - device code
    planes, h, w = x.shape
    _, oh, ow = y.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, planes * oh * ow, step):
        p = e // (oh * ow)
        r = e - p * (oh * ow)
        oy = r // ow
        ox = r - oy * ow
        hy, wx = oy * stride - pad, ox * stride - pad
        i0, i1 = _larger(0, -hy), _smaller(k, h - hy)  # the window's rows and columns in the image
        j0, j1 = _larger(0, -wx), _smaller(k, w - wx)
        best = x[p, hy + i0, wx + j0]  # the first element inside the image
        won = i0 * k + j0
        for i in range(i0, i1):
            for j in range(j0, j1):
                v = x[p, hy + i, wx + j]
                # a larger element, or the first NaN (which then stays), wins
                t = v > best or (v != v and best == best)
                best = v if t else best
                won = i * k + j if t else won
        y[p, oy, ox] = best
        arg[p, oy, ox] = won


@cuda.jit(cache=True)
def maxpool2x2_fwd_kernel(x, y, arg):  # pragma: no cover - device code
    # k = stride = 2, no padding: every window lies inside the image (OH = H // 2)
    planes, oh, ow = y.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, planes * oh * ow, step):
        p = e // (oh * ow)
        r = e - p * (oh * ow)
        oy = r // ow
        ox = r - oy * ow
        a = x[p, 2 * oy, 2 * ox]
        b = x[p, 2 * oy, 2 * ox + 1]
        c = x[p, 2 * oy + 1, 2 * ox]
        d = x[p, 2 * oy + 1, 2 * ox + 1]
        best, won = _max4(a, b, c, d)
        y[p, oy, ox] = best
        arg[p, oy, ox] = won


@cuda.jit(cache=True)
def pool_tile_bwd_kernel(
    dy, arg, is_max, k, stride, pad, scale, zero, dx
):  # pragma: no cover - device code
    # stride >= k: one thread per stride×stride tile of dx, which it writes whole
    planes, h, w = dx.shape
    _, oh, ow = dy.shape
    th, tw = (h + pad + stride - 1) // stride, (w + pad + stride - 1) // stride
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, planes * th * tw, step):
        p = e // (th * tw)
        r = e - p * (th * tw)
        ty = r // tw
        tx = r - ty * tw
        hy, wx = ty * stride - pad, tx * stride - pad
        g = zero
        i_lo, i_hi, j_lo, j_hi = 0, 0, 0, 0  # the tile pixels [i_lo, i_hi) x [j_lo, j_hi) get g
        if ty < oh and tx < ow:
            if is_max:
                a = arg[p, ty, tx]
                i_lo = a // k
                j_lo = a - i_lo * k
                i_hi, j_hi = i_lo + 1, j_lo + 1
                g = dy[p, ty, tx]
            else:
                i_hi, j_hi = k, k
                g = dy[p, ty, tx] * scale
        for i in range(_larger(0, -hy), _smaller(stride, h - hy)):
            for j in range(_larger(0, -wx), _smaller(stride, w - wx)):
                hit = i_lo <= i and i < i_hi and j_lo <= j and j < j_hi
                dx[p, hy + i, wx + j] = g if hit else zero


@cuda.jit(cache=True)
def maxpool_scatter_bwd_kernel(dy, arg, k, stride, pad, dx):  # pragma: no cover - device code
    # stride < k: dx arrives zeroed; one thread per output element adds dy at its argmax
    planes, oh, ow = dy.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, planes * oh * ow, step):
        p = e // (oh * ow)
        r = e - p * (oh * ow)
        oy = r // ow
        ox = r - oy * ow
        a = arg[p, oy, ox]
        i = a // k
        j = a - i * k
        cuda.atomic.add(dx, (p, oy * stride - pad + i, ox * stride - pad + j), dy[p, oy, ox])


@cuda.jit(cache=True)
def avgpool_fwd_kernel(x, k, stride, pad, zero, scale, y):  # pragma: no cover - device code
    planes, h, w = x.shape
    _, oh, ow = y.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, planes * oh * ow, step):
        p = e // (oh * ow)
        r = e - p * (oh * ow)
        oy = r // ow
        ox = r - oy * ow
        hy, wx = oy * stride - pad, ox * stride - pad
        acc = zero
        for i in range(_larger(0, -hy), _smaller(k, h - hy)):
            for j in range(_larger(0, -wx), _smaller(k, w - wx)):
                acc += x[p, hy + i, wx + j]
        y[p, oy, ox] = acc * scale


@cuda.jit(cache=True)
def avgpool_bwd_kernel(dy, k, stride, pad, zero, scale, dx):  # pragma: no cover - device code
    # stride < k: one thread per input pixel, which the windows oy in
    # [ceil((t - k + 1) / stride), floor(t / stride)], t = hy + pad, contain (columns alike)
    planes, h, w = dx.shape
    _, oh, ow = dy.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, planes * h * w, step):
        p = e // (h * w)
        r = e - p * (h * w)
        hy = r // w
        wx = r - hy * w
        t, u = hy + pad, wx + pad
        y0, y1 = _larger(0, (t - k + stride) // stride), _smaller(oh, t // stride + 1)
        x0, x1 = _larger(0, (u - k + stride) // stride), _smaller(ow, u // stride + 1)
        acc = zero
        for oy in range(y0, y1):
            for ox in range(x0, x1):
                acc += dy[p, oy, ox] * scale
        dx[p, hy, wx] = acc


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


def _check_grad(name: str, dy: Any, x_shape: tuple, k: int, stride: int, pad: int) -> None:
    check(name, dy, 4)
    n, c, h, w = x_shape
    expected = (n, c, out_size(h, k, stride, pad), out_size(w, k, stride, pad))
    if tuple(dy.shape) != expected:
        raise ValueError(f"{name}: expected dy of shape {expected}, got {tuple(dy.shape)}")


def maxpool2d_fwd(x: Any, k: int, stride: int, pad: int) -> tuple[Any, Any]:
    """Shape: (N, C, H, W) -> y (N, C, OH, OW), argmax (N, C, OH, OW) int32 in [0, k*k)."""
    check("maxpool2d", x, 4)
    n, c, h, w = x.shape
    oh, ow = out_size(h, k, stride, pad), out_size(w, k, stride, pad)
    xp = array_module(x)
    y = xp.empty((n * c, oh, ow), dtype=x.dtype)
    arg = xp.empty((n * c, oh, ow), dtype=np.int32)
    if k == 2 and stride == 2 and pad == 0:
        maxpool2x2_fwd_kernel[config(y.size)](_planes(x), y, arg)
    else:
        maxpool_fwd_kernel[config(y.size)](_planes(x), k, stride, pad, y, arg)
    return y.reshape(n, c, oh, ow), arg.reshape(n, c, oh, ow)


def _tiles(x_shape: tuple, stride: int, pad: int) -> int:
    """How many stride×stride tiles pool_tile_bwd_kernel covers dx with."""
    n, c, h, w = x_shape
    return n * c * -(-(h + pad) // stride) * -(-(w + pad) // stride)


def maxpool2d_bwd(dy: Any, arg: Any, x_shape: tuple, k: int, stride: int, pad: int) -> Any:
    """Shape: dy (N, C, OH, OW) -> dx (N, C, H, W); each dy goes to the input that won its window.

    Windows apart (stride >= k): one write of each dx pixel, no memset. Overlapping: dx
    zeroed, then atomic adds (see the module docstring for what that means for the bits)."""
    _check_grad("maxpool2d_bwd", dy, x_shape, k, stride, pad)
    if tuple(arg.shape) != tuple(dy.shape) or np.dtype(arg.dtype) != np.dtype(np.int32):
        raise ValueError(f"maxpool2d_bwd: expected an int32 argmax of shape {tuple(dy.shape)}")
    n, c, h, w = x_shape
    xp = array_module(dy)
    if stride >= k:
        dx = xp.empty((n * c, h, w), dtype=dy.dtype)
        pool_tile_bwd_kernel[config(_tiles(x_shape, stride, pad))](
            _planes(dy), _planes(arg), True, k, stride, pad, dy.dtype.type(1), dy.dtype.type(0), dx
        )
    else:
        dx = xp.zeros((n * c, h, w), dtype=dy.dtype)
        maxpool_scatter_bwd_kernel[config(dy.size)](_planes(dy), _planes(arg), k, stride, pad, dx)
    return dx.reshape(x_shape)


def avgpool2d_fwd(x: Any, k: int, stride: int, pad: int) -> Any:
    """Shape: (N, C, H, W) -> (N, C, OH, OW); padded zeros count (count_include_pad)."""
    check("avgpool2d", x, 4)
    n, c, h, w = x.shape
    oh, ow = out_size(h, k, stride, pad), out_size(w, k, stride, pad)
    y = array_module(x).empty((n * c, oh, ow), dtype=x.dtype)
    avgpool_fwd_kernel[config(y.size)](
        _planes(x), k, stride, pad, x.dtype.type(0), x.dtype.type(1.0 / (k * k)), y
    )
    return y.reshape(n, c, oh, ow)


def avgpool2d_bwd(dy: Any, x_shape: tuple, k: int, stride: int, pad: int) -> Any:
    """Shape: (N, C, OH, OW) -> (N, C, H, W)."""
    _check_grad("avgpool2d_bwd", dy, x_shape, k, stride, pad)
    n, c, h, w = x_shape
    xp = array_module(dy)
    dx = xp.empty((n * c, h, w), dtype=dy.dtype)
    zero, scale = dy.dtype.type(0), dy.dtype.type(1.0 / (k * k))
    if stride >= k:
        unused = xp.empty((1, 1, 1), dtype=np.int32)  # no argmax: the whole window gets dy/k²
        pool_tile_bwd_kernel[config(_tiles(x_shape, stride, pad))](
            _planes(dy), unused, False, k, stride, pad, scale, zero, dx
        )
    else:
        avgpool_bwd_kernel[config(dx.size)](_planes(dy), k, stride, pad, zero, scale, dx)
    return dx.reshape(x_shape)


def _global_fwd(x: Any, is_max: bool) -> tuple[Any, Any]:
    check("global_pool", x, 4, contiguous=False)
    xp = array_module(x)
    n, c, h, w = x.shape
    y = xp.empty(n * c, dtype=x.dtype)
    arg = xp.empty(n * c if is_max else 1, dtype=np.int32)
    global_pool_fwd_kernel[config(n * c)](
        x.reshape(n * c, h * w), is_max, x.dtype.type(1.0 / (h * w)), y, arg
    )
    return y.reshape(n, c), arg.reshape(n, c) if is_max else None


def _global_bwd(dy: Any, arg: Any, x_shape: tuple) -> Any:
    check("global_pool_bwd", dy, 2, contiguous=False)
    xp = array_module(dy)
    n, c, h, w = x_shape
    dx = xp.empty((n * c, h * w), dtype=dy.dtype)
    is_max = arg is not None
    global_pool_bwd_kernel[config(dx.size)](
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
