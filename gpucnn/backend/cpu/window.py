"""im2col / col2im: unfold sliding windows into columns and fold them back.

Each kernel works on a range of the batch's images, which gpucnn.backend.cpu.threads splits
over the cores (see pool.py for why not Numba's own threads). Padding is fused: out-of-image
positions read as ``pad_value`` instead of materialising a padded copy of the input.

Stride 1 with "same" padding (2P = k - 1, every 3×3 pad-1 conv) has its own pair of kernels.
There, row (c, i, j) of the columns is image plane c shifted by (i - P)·W + (j - P) elements,
so each (row, image) is one long contiguous copy followed by a few strided fixes of the
columns that fell off the left or right edge. The general kernels copy a row of OW elements
at a time and pay a loop set-up for each (measured on the seed model's conv2,
64×32×14×14: im2col 6.8 -> 2.4 ms, col2im 6.8 -> 2.7 ms). The copies loop over a view from
index 0: a loop index Numba can see is non-negative needs no wraparound check, so LLVM
vectorises it.
"""

from __future__ import annotations

import numba
import numpy as np

from gpucnn.backend.cpu import threads


def _out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _im2col(x, k, stride, pad, pad_value, cols, lo, hi):  # pragma: no cover - compiled
    n, c, h, w = x.shape
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1
    for row in range(c * k * k):
        ci = row // (k * k)
        i = (row // k) % k
        j = row % k
        for ni in range(lo, hi):
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


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _col2im(cols, k, stride, pad, out, lo, hi):  # pragma: no cover - compiled
    n, c, h, w = out.shape
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1
    for ci in range(c):
        for i in range(k):
            for j in range(k):
                row = (ci * k + i) * k + j
                for ni in range(lo, hi):
                    base = ni * oh * ow
                    for y in range(oh):
                        hy = y * stride - pad + i
                        if hy < 0 or hy >= h:
                            continue
                        for xo in range(ow):
                            wx = xo * stride - pad + j
                            if 0 <= wx < w:
                                out[ni, ci, hy, wx] += cols[row, base + y * ow + xo]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _im2col_same(x, k, pad, pad_value, cols, lo, hi):  # pragma: no cover - compiled
    n, c, h, w = x.shape
    hw = h * w
    flat = x.reshape(n * c * hw)
    for row in range(c * k * k):
        ci = row // (k * k)
        i = (row // k) % k
        j = row % k
        shift = (i - pad) * w + (j - pad)  # cols[row, q] = plane[q + shift] where inside
        y0, y1 = max(0, pad - i), min(h, h + pad - i)  # output rows whose tap row is inside
        x0, x1 = max(0, pad - j), min(w, w + pad - j)  # likewise columns
        qa = max(y0 * w, -shift)
        qb = max(qa, min(y1 * w, hw - shift))
        dst_row = cols[row]
        for ni in range(lo, hi):
            d = ni * hw
            dst = dst_row[d + qa : d + qb]
            src = flat[(ni * c + ci) * hw + shift + qa : (ni * c + ci) * hw + shift + qb]
            for q in range(qb - qa):
                dst[q] = src[q]
            dst_row[d : d + qa] = pad_value
            dst_row[d + qb : d + hw] = pad_value
            for xo in range(0, x0):  # taps that fell off the left edge (wrapped a row)
                dst_row[d + y0 * w + xo : d + y1 * w : w] = pad_value
            for xo in range(x1, w):  # and off the right edge
                dst_row[d + y0 * w + xo : d + y1 * w : w] = pad_value


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _col2im_same(cols, k, pad, out, lo, hi):  # pragma: no cover - compiled
    n, c, h, w = out.shape
    hw = h * w
    flat = out.reshape(n * c * hw)
    for ci in range(c):
        for i in range(k):
            for j in range(k):
                row = (ci * k + i) * k + j
                src_row = cols[row]
                shift = (i - pad) * w + (j - pad)
                y0, y1 = max(0, pad - i), min(h, h + pad - i)
                x0, x1 = max(0, pad - j), min(w, w + pad - j)
                qa = max(y0 * w, -shift)
                qb = max(qa, min(y1 * w, hw - shift))
                for ni in range(lo, hi):
                    d = ni * hw
                    # zero the taps that fell off an edge, so the long add below is exact
                    for xo in range(0, x0):
                        src_row[d + y0 * w + xo : d + y1 * w : w] = 0
                    for xo in range(x1, w):
                        src_row[d + y0 * w + xo : d + y1 * w : w] = 0
                    o = (ni * c + ci) * hw + shift
                    dst = flat[o + qa : o + qb]
                    src = src_row[d + qa : d + qb]
                    for q in range(qb - qa):
                        dst[q] += src[q]


def _same(x_shape: tuple, k: int, stride: int, pad: int) -> bool:
    return stride == 1 and 2 * pad == k - 1 and x_shape[2] > 0 and x_shape[3] > 0


def im2col(x: np.ndarray, k: int, stride: int, pad: int, pad_value: float = 0.0) -> np.ndarray:
    """Unfold the k×k windows of ``x`` into columns; rows (c, i, j), columns (n, oh, ow).

    Shape: (N, C, H, W) -> (C*k*k, N*OH*OW), OH = floor((H + 2*pad - k) / stride) + 1.
    """
    n, c, h, w = x.shape
    oh, ow = _out(h, k, stride, pad), _out(w, k, stride, pad)
    cols = np.empty((c * k * k, n * oh * ow), dtype=x.dtype)
    grain = threads.grain(c * k * k * oh * ow)  # images per thread, at least
    fill = x.dtype.type(pad_value)
    if _same(x.shape, k, stride, pad):
        threads.split(_im2col_same, n, np.ascontiguousarray(x), k, pad, fill, cols, grain=grain)
    else:
        threads.split(_im2col, n, np.ascontiguousarray(x), k, stride, pad, fill, cols, grain=grain)
    return cols


def col2im(
    cols: np.ndarray,
    x_shape: tuple[int, int, int, int],
    k: int,
    stride: int,
    pad: int,
    overwrite_cols: bool = False,
) -> np.ndarray:
    """Fold columns back into an image, summing where windows overlap (the adjoint of im2col).

    ``overwrite_cols=True`` lets the kernel use ``cols`` as scratch (conv backward hands it a
    temporary): the fast stride-1 "same" kernel then zeroes its out-of-image taps in place.

    Shape: (C*k*k, N*OH*OW) -> (N, C, H, W).
    """
    out = np.zeros(x_shape, dtype=cols.dtype)
    n = x_shape[0]
    grain = threads.grain(cols.size // max(1, n))  # images per thread, at least
    if overwrite_cols and _same(x_shape, k, stride, pad) and cols.flags.c_contiguous:
        threads.split(_col2im_same, n, cols, k, pad, out, grain=grain)
    else:
        threads.split(_col2im, n, np.ascontiguousarray(cols), k, stride, pad, out, grain=grain)
    return out
