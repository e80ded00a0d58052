"""im2col / col2im: unfold sliding windows into columns and fold them back.

Serial Numba kernels (see pool.py for why not parallel). Padding is fused: out-of-image
positions read as ``pad_value`` instead of materialising a padded copy of the input.
"""

from __future__ import annotations

import numba
import numpy as np


def _out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


@numba.njit(cache=True)
def _im2col(x, k, stride, pad, pad_value, cols):  # pragma: no cover - compiled
    n, c, h, w = x.shape
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1
    for row in range(c * k * k):
        ci = row // (k * k)
        i = (row // k) % k
        j = row % k
        for ni in range(n):
            base = ni * oh * ow
            for y in range(oh):
                hy = y * stride - pad + i
                inside_y = 0 <= hy < h
                for xo in range(ow):
                    wx = xo * stride - pad + j
                    if inside_y and 0 <= wx < w:
                        cols[row, base + y * ow + xo] = x[ni, ci, hy, wx]
                    else:
                        cols[row, base + y * ow + xo] = pad_value


@numba.njit(cache=True)
def _col2im(cols, k, stride, pad, out):  # pragma: no cover - compiled
    n, c, h, w = out.shape
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1
    for ci in range(c):
        for i in range(k):
            for j in range(k):
                row = (ci * k + i) * k + j
                for ni in range(n):
                    base = ni * oh * ow
                    for y in range(oh):
                        hy = y * stride - pad + i
                        if hy < 0 or hy >= h:
                            continue
                        for xo in range(ow):
                            wx = xo * stride - pad + j
                            if 0 <= wx < w:
                                out[ni, ci, hy, wx] += cols[row, base + y * ow + xo]


def im2col(x: np.ndarray, k: int, stride: int, pad: int, pad_value: float = 0.0) -> np.ndarray:
    """Unfold the k×k windows of ``x`` into columns; rows (c, i, j), columns (n, oh, ow).

    Shape: (N, C, H, W) -> (C*k*k, N*OH*OW), OH = floor((H + 2*pad - k) / stride) + 1.
    """
    n, c, h, w = x.shape
    oh, ow = _out(h, k, stride, pad), _out(w, k, stride, pad)
    cols = np.empty((c * k * k, n * oh * ow), dtype=x.dtype)
    _im2col(np.ascontiguousarray(x), k, stride, pad, x.dtype.type(pad_value), cols)
    return cols


def col2im(
    cols: np.ndarray, x_shape: tuple[int, int, int, int], k: int, stride: int, pad: int
) -> np.ndarray:
    """Fold columns back into an image, summing where windows overlap (the adjoint of im2col).

    Shape: (C*k*k, N*OH*OW) -> (N, C, H, W).
    """
    out = np.zeros(x_shape, dtype=cols.dtype)
    _col2im(np.ascontiguousarray(cols), k, stride, pad, out)
    return out
