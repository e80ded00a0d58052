"""Direct convolution for layers with few taps (C*k*k small: a network's first layer, one input
channel and a 3×3 filter, has 9): no im2col columns, no GEMM (the CUDA twins are in
cuda/direct.py).

Forward, for x (N, C, H, W), w (F, C, k, k), b (F,) and xpad the zero-padded input:

    y[n, f, oh, ow] = b[f] + sum_{c, i, j} w[f, c, i, j] * xpad[n, c, oh*S + i, ow*S + j]

Backward, the weight and bias gradients (a first layer needs no dx; functional.conv computes
dx, where one is wanted, as col2im(Wm.T @ dY), which needs no columns either):

    dw[f, c, i, j] = sum_{n, oh, ow} dy[n, f, oh, ow] * xpad[n, c, oh*S + i, ow*S + j]
    db[f]          = sum_{n, oh, ow} dy[n, f, oh, ow]

With C*k*k taps the columns are C*k*k copies of the image; for conv1 of the seed model at
batch 512 that is 3.6 M values written and read twice (forward GEMM, weight GEMM) to do 9
multiply-adds per output. Here each tap is one pass along an output row: for output row oh
and tap (c, i, j), the outputs ow whose input column ow*S + j - P lies inside the image are
a contiguous range [ow0, ow1) (the rest read padding, which is zero), so the inner loop is a
plain axpy (forward) or dot product (backward) with no bounds test. Serial loops, like the
pooling kernels (pool.py says why). They are the reference the CUDA kernels are tested
against, not this backend's convolution: along rows of 28 they measured 2.8-4.8x slower than
im2col + OpenBLAS for the seed model's first layer (benchmarks/results/direct-conv-cpu.md), so
DIRECT_CONV_MAX_TAPS is 0 here.

Sums run in another order than the GEMM's, so results agree with the im2col path to
rounding, not bit for bit.
"""

from __future__ import annotations

import numba
import numpy as np

from gpucnn.backend.cpu.window import _out


@numba.njit(inline="always")
def _inside(j, pad, stride, w, ow):  # pragma: no cover - compiled
    """[ow0, ow1): the outputs of a row whose tap column ow*stride - pad + j is inside 0..w-1."""
    lo = pad - j  # need ow*stride >= pad - j
    ow0 = (lo + stride - 1) // stride if lo > 0 else 0
    hi = w - 1 + pad - j  # need ow*stride <= w - 1 + pad - j
    ow1 = min(ow, hi // stride + 1) if hi >= 0 else 0
    return ow0, max(ow0, ow1)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _direct_fwd(x, w, b, stride, pad, y):  # pragma: no cover - compiled
    nn, nc, h, wd = x.shape
    nf, _, k, _ = w.shape
    _, _, oh, ow = y.shape
    for n in range(nn):
        for f in range(nf):
            out = y[n, f]
            out[:, :] = b[f]
            for c in range(nc):
                plane = x[n, c]
                for i in range(k):
                    for oy in range(oh):
                        hy = oy * stride - pad + i
                        if hy < 0 or hy >= h:
                            continue
                        src = plane[hy]
                        dst = out[oy]
                        for j in range(k):
                            wv = w[f, c, i, j]
                            ow0, ow1 = _inside(j, pad, stride, wd, ow)
                            off = j - pad
                            if stride == 1:  # unit stride: contiguous slices
                                d = dst[ow0:ow1]
                                v = src[ow0 + off : ow1 + off]
                                for q in range(ow1 - ow0):
                                    d[q] += wv * v[q]
                            else:
                                for ox in range(ow0, ow1):
                                    dst[ox] += wv * src[ox * stride + off]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _direct_bwd(dy, x, k, stride, pad, dw, db):  # pragma: no cover - compiled
    nn, nc, h, wd = x.shape
    _, nf, oh, ow = dy.shape
    zero = dy.dtype.type(0)
    for f in range(nf):
        bias_acc = 0.0  # float64: N*OH*OW terms
        for n in range(nn):
            g = dy[n, f]
            for oy in range(oh):
                row = g[oy]
                s = zero
                for ox in range(ow):
                    s += row[ox]
                bias_acc += s
            for c in range(nc):
                plane = x[n, c]
                for i in range(k):
                    for j in range(k):
                        ow0, ow1 = _inside(j, pad, stride, wd, ow)
                        off = j - pad
                        acc = zero
                        for oy in range(oh):
                            hy = oy * stride - pad + i
                            if hy < 0 or hy >= h:
                                continue
                            src = plane[hy]
                            row = g[oy]
                            if stride == 1:  # a contiguous dot product
                                r = row[ow0:ow1]
                                v = src[ow0 + off : ow1 + off]
                                for q in range(ow1 - ow0):
                                    acc += r[q] * v[q]
                            else:
                                for ox in range(ow0, ow1):
                                    acc += row[ox] * src[ox * stride + off]
                        dw[f, c, i, j] += acc
        db[f] = bias_acc


def conv2d_direct_fwd(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, pad: int):
    """Convolve without columns: y = conv(x, w) + b.

    Shape: x (N, C, H, W), w (F, C, k, k), b (F,) or None -> y (N, F, OH, OW),
    OH = floor((H + 2*pad - k) / stride) + 1 (likewise OW).
    """
    n, c, h, wd = x.shape
    f, _, k, _ = w.shape
    y = np.empty((n, f, _out(h, k, stride, pad), _out(wd, k, stride, pad)), dtype=x.dtype)
    bias = b if b is not None else np.zeros(f, dtype=x.dtype)
    _direct_fwd(np.ascontiguousarray(x), np.ascontiguousarray(w), bias, stride, pad, y)
    return y


def conv2d_direct_bwd(dy: np.ndarray, x: np.ndarray, k: int, stride: int, pad: int):
    """The weight and bias gradients of conv2d_direct_fwd, without columns.

    Shape: dy (N, F, OH, OW), x (N, C, H, W) -> dw (F, C, k, k), db (F,).
    """
    n, c, _, _ = x.shape
    f = dy.shape[1]
    dw = np.zeros((f, c, k, k), dtype=dy.dtype)
    db = np.empty(f, dtype=dy.dtype)
    _direct_bwd(np.ascontiguousarray(dy), np.ascontiguousarray(x), k, stride, pad, dw, db)
    return dw, db
