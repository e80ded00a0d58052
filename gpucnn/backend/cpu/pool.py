"""Pooling windows on the CPU: direct Numba loops over the N*C planes.

Each kernel loops over a range of the N*C planes, and gpucnn.backend.cpu.threads splits the
planes over the cores. Not with Numba's own thread pool: next to OpenBLAS's it spun and made a
training step slower, not faster (measured: 524 vs 957 images/s for the seed model on 2
cores); threads.py's workers sleep between kernels.

Max pooling keeps the index (within the window, i*k + j) of each window's winner for the
backward pass; a NaN wins its window, so a NaN in the input stays visible downstream.

Both max-pool kernels pick the winner with selects rather than branches: on random
activations "is b bigger than a" is a coin flip, and mispredicted branches cost 6x (measured:
9.3 ms vs 1.5 ms for the seed model's first pool, 64×32×28×28). NaNs take a rare branch. The
2×2, stride-2 window (every model here uses it) has its own unrolled kernel.
"""

from __future__ import annotations

import numba
import numpy as np

from gpucnn.backend import formulas
from gpucnn.backend.cpu import threads
from gpucnn.backend.cpu.window import _out

_max4 = numba.njit(inline="always", error_model="numpy")(formulas.max4_element)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _maxpool_fwd(x, k, stride, pad, y, arg, lo, hi):  # pragma: no cover - compiled
    _, h, w = x.shape
    _, oh, ow = y.shape
    for p in range(lo, hi):
        for oy in range(oh):
            i0, i1 = max(0, pad - oy * stride), min(k, h + pad - oy * stride)
            for ox in range(ow):
                j0, j1 = max(0, pad - ox * stride), min(k, w + pad - ox * stride)
                hy, wx = oy * stride - pad, ox * stride - pad
                best = x[p, hy + i0, wx + j0]  # the first element inside the image
                won = i0 * k + j0
                nan_at = -1
                for i in range(i0, i1):
                    for j in range(j0, j1):
                        v = x[p, hy + i, wx + j]
                        t = v > best  # a select, not a branch (see the module docstring)
                        best = v if t else best
                        won = i * k + j if t else won
                        if v != v and nan_at < 0:
                            nan_at = i * k + j
                if nan_at >= 0:  # the first NaN wins
                    won = nan_at
                    best = x[p, hy + nan_at // k, wx + nan_at % k]
                y[p, oy, ox] = best
                arg[p, oy, ox] = won


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _maxpool2x2_fwd(x, y, arg, lo, hi):  # pragma: no cover - compiled
    _, oh, ow = y.shape
    for p in range(lo, hi):
        for oy in range(oh):
            for ox in range(ow):
                a = x[p, 2 * oy, 2 * ox]
                b = x[p, 2 * oy, 2 * ox + 1]
                c = x[p, 2 * oy + 1, 2 * ox]
                d = x[p, 2 * oy + 1, 2 * ox + 1]
                best, won = _max4(a, b, c, d)
                y[p, oy, ox] = best
                arg[p, oy, ox] = won


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _maxpool_bwd(dy, arg, k, stride, pad, dx, lo, hi):  # pragma: no cover - compiled
    _, oh, ow = dy.shape
    for p in range(lo, hi):
        for oy in range(oh):
            for ox in range(ow):
                a = arg[p, oy, ox]
                dx[p, oy * stride - pad + a // k, ox * stride - pad + a % k] += dy[p, oy, ox]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _avgpool_fwd(x, k, stride, pad, y, lo, hi):  # pragma: no cover - compiled
    _, h, w = x.shape
    _, oh, ow = y.shape
    scale = x.dtype.type(1.0) / (k * k)
    for p in range(lo, hi):
        for oy in range(oh):
            for ox in range(ow):
                acc = x.dtype.type(0.0)
                for i in range(k):
                    hy = oy * stride - pad + i
                    if hy < 0 or hy >= h:
                        continue
                    for j in range(k):
                        wx = ox * stride - pad + j
                        if 0 <= wx < w:
                            acc += x[p, hy, wx]
                y[p, oy, ox] = acc * scale


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _avgpool_bwd(dy, k, stride, pad, dx, lo, hi):  # pragma: no cover - compiled
    _, h, w = dx.shape
    _, oh, ow = dy.shape
    scale = dy.dtype.type(1.0) / (k * k)
    for p in range(lo, hi):
        for oy in range(oh):
            for ox in range(ow):
                g = dy[p, oy, ox] * scale
                for i in range(k):
                    hy = oy * stride - pad + i
                    if hy < 0 or hy >= h:
                        continue
                    for j in range(k):
                        wx = ox * stride - pad + j
                        if 0 <= wx < w:
                            dx[p, hy, wx] += g


def _planes(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return np.ascontiguousarray(x).reshape(n * c, h, w)


def _over_planes(kernel, planes: np.ndarray, *args) -> None:
    """kernel(planes, *args, lo, hi) over ranges of the N*C planes, split over the cores."""
    size = planes.shape[1] * planes.shape[2]
    threads.split(kernel, planes.shape[0], planes, *args, grain=threads.grain(size))


def maxpool2d_fwd(x: np.ndarray, k: int, stride: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Max over each window, and which window element won (for the backward pass).

    Shape: (N, C, H, W) -> y (N, C, OH, OW), argmax (N, C, OH, OW) int32 in [0, k*k).
    Padding never wins.
    """
    n, c, h, w = x.shape
    oh, ow = _out(h, k, stride, pad), _out(w, k, stride, pad)
    y = np.empty((n * c, oh, ow), dtype=x.dtype)
    arg = np.empty((n * c, oh, ow), dtype=np.int32)
    if k == 2 and stride == 2 and pad == 0:
        _over_planes(_maxpool2x2_fwd, _planes(x), y, arg)
    else:
        _over_planes(_maxpool_fwd, _planes(x), k, stride, pad, y, arg)
    return y.reshape(n, c, oh, ow), arg.reshape(n, c, oh, ow)


def maxpool2d_bwd(
    dy: np.ndarray, arg: np.ndarray, x_shape: tuple, k: int, stride: int, pad: int
) -> np.ndarray:
    """Route each output gradient to the input element that won its window.

    Shape: dy (N, C, OH, OW) -> dx (N, C, H, W).
    """
    n, c, h, w = x_shape
    dx = np.zeros((n * c, h, w), dtype=dy.dtype)
    _over_planes(_maxpool_bwd, _planes(dy), _planes(arg), k, stride, pad, dx)
    return dx.reshape(x_shape)


def avgpool2d_fwd(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """Mean over each window, padding counted as zeros (PyTorch's count_include_pad=True).

    Shape: (N, C, H, W) -> (N, C, OH, OW).
    """
    n, c, h, w = x.shape
    oh, ow = _out(h, k, stride, pad), _out(w, k, stride, pad)
    y = np.empty((n * c, oh, ow), dtype=x.dtype)
    _over_planes(_avgpool_fwd, _planes(x), k, stride, pad, y)
    return y.reshape(n, c, oh, ow)


def avgpool2d_bwd(dy: np.ndarray, x_shape: tuple, k: int, stride: int, pad: int) -> np.ndarray:
    """Spread each output gradient evenly over its window. Shape: (N, C, OH, OW) -> (N, C, H, W)."""
    dx = np.zeros((x_shape[0] * x_shape[1], *x_shape[2:]), dtype=dy.dtype)
    _over_planes(_avgpool_bwd, _planes(dy), k, stride, pad, dx)
    return dx.reshape(x_shape)


def global_avgpool2d_fwd(x: np.ndarray) -> np.ndarray:
    """y[n, c] = mean of x[n, c] over H, W. Shape: (N, C, H, W) -> (N, C)."""
    return x.mean(axis=(2, 3), dtype=x.dtype)


def global_avgpool2d_bwd(dy: np.ndarray, x_shape: tuple) -> np.ndarray:
    """Every position gets dy / (H*W). Shape: (N, C) -> (N, C, H, W)."""
    h, w = x_shape[2:]
    scale = dy.dtype.type(1.0 / (h * w))
    return np.ascontiguousarray(np.broadcast_to((dy * scale)[:, :, None, None], x_shape))


def global_maxpool2d_fwd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y[n, c] = max of x[n, c] over H, W, and its flat position (the first of ties; a NaN
    wins). Shape: (N, C, H, W) -> y (N, C), argmax (N, C) int32."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    arg = flat.argmax(axis=2).astype(np.int32)  # argmax returns the first NaN, if any
    return np.take_along_axis(flat, arg[:, :, None].astype(np.intp), axis=2)[:, :, 0], arg


def global_maxpool2d_bwd(dy: np.ndarray, arg: np.ndarray, x_shape: tuple) -> np.ndarray:
    """The gradient goes to each plane's maximum. Shape: (N, C) -> (N, C, H, W)."""
    n, c = x_shape[:2]
    dx = np.zeros((n, c, x_shape[2] * x_shape[3]), dtype=dy.dtype)
    np.put_along_axis(dx, arg[:, :, None].astype(np.intp), dy[:, :, None], axis=2)
    return dx.reshape(x_shape)
