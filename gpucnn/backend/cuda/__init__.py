"""CUDA kernels and their launchers: the same functions, names and shapes as gpucnn.backend.cpu.

Launchers check shapes, dtype and contiguity, allocate outputs with the input's array module
(CuPy on a GPU; NumPy under NUMBA_ENABLE_CUDASIM=1) and launch one thread per output element
(grid-stride loops, at most MAX_BLOCKS blocks).
"""

from __future__ import annotations

from typing import Any

import numpy as np

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


def _check(name: str, a: Any, ndim: int) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(a.shape)}")
    if np.dtype(a.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"{name}: expected float32 (or float64), got {a.dtype}")
    if not a.flags.c_contiguous:
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


def generator(seed: int) -> Any:
    """A random generator on the GPU (CuPy's); NumPy's under the simulator."""
    try:
        import cupy
    except ImportError:  # the simulator on a machine without CuPy
        return np.random.default_rng(seed)
    return cupy.random.default_rng(seed)


__all__ = [
    "generator",
    "im2col",
    "col2im",
    "maxpool2d_fwd",
    "maxpool2d_bwd",
    "avgpool2d_fwd",
    "avgpool2d_bwd",
]
