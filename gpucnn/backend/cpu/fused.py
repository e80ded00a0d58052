"""A convolution's epilogue fused on the CPU: bias + ReLU + 2×2 stride-2 max pool in one pass
over the GEMM output, and its backward in one pass into the layout the GEMMs want (the CUDA
twins are in cuda/fused.py).

The GEMM of a convolution gives yt = Wm @ cols in (F, N, OH, OW) order. Unfused, the layer
transposes it to (N, F, OH, OW) adding the bias (a full-size pass), the max pool reads that
(a second), and the ReLU runs on the pooled quarter. Here one pass reads yt and writes only
the pooled output and its argmax:

    z = yt[f, n, 2py + i, 2px + j] + b[f]           (i, j) in {0, 1}²
    a = argmax_{i, j} z (first of equal maxima, i*2 + j; a NaN wins)
    y[n, f, py, px] = relu(z at a),  arg[n, f, py, px] = a

Backward writes dY2 (F, N*OH*OW), the gradient at yt, directly: g = dy where y > 0, else 0,
at each window's argmax, zero everywhere else (the rest of the window, and the last row or
column that floor division leaves out of every window), and db[f] = sum of g over (n, py, px).
The values of y and arg, and of dY2, are those of the unfused layers, bit for bit; db is the
same sum in another order (accumulated in float64 here).

Both loop over a range of the filters, which gpucnn.backend.cpu.threads splits over the cores
(each filter's db is its own sum, so the bits do not depend on the split). Both use selects,
not branches (pool.py says why): the forward picks the winner as pool.py's 2×2 kernel does;
the backward places g by the argmax's two bits (measured on the seed model's conv1 output at
batch 32: 2.4 ms with a compare per position, 0.65 ms so).
"""

from __future__ import annotations

import numba
import numpy as np

from gpucnn.backend import formulas
from gpucnn.backend.cpu import threads

_max4 = numba.njit(inline="always", error_model="numpy")(formulas.max4_element)
_relu = numba.njit(inline="always", error_model="numpy")(formulas.relu_element)
_relu_grad = numba.njit(inline="always", error_model="numpy")(formulas.relu_grad_element)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _conv_relu_pool_fwd(yt, b, y, arg, f0, f1):  # pragma: no cover - compiled
    _, nn, _, _ = yt.shape
    _, _, ph, pw = y.shape
    zero = yt.dtype.type(0)
    for f in range(f0, f1):
        bf = b[f]
        for n in range(nn):
            src = yt[f, n]
            dst = y[n, f]
            won_at = arg[n, f]
            for py in range(ph):
                r0 = src[2 * py]
                r1 = src[2 * py + 1]
                for px in range(pw):
                    a = r0[2 * px] + bf
                    bb = r0[2 * px + 1] + bf
                    c = r1[2 * px] + bf
                    d = r1[2 * px + 1] + bf
                    best, won = _max4(a, bb, c, d)
                    dst[py, px] = _relu(best, zero)
                    won_at[py, px] = won


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _conv_relu_pool_bwd(dy, arg, y, dy2, db, f0, f1):  # pragma: no cover - compiled
    _, nn, oh, ow = dy2.shape
    _, _, ph, pw = dy.shape
    zero = dy.dtype.type(0)
    for f in range(f0, f1):
        acc = 0.0  # float64
        for n in range(nn):
            g_in = dy[n, f]
            y_in = y[n, f]
            a_in = arg[n, f]
            dst = dy2[f, n]
            for py in range(ph):
                r0 = dst[2 * py]
                r1 = dst[2 * py + 1]
                for px in range(pw):
                    v = g_in[py, px]  # every load first: a load under a condition is a branch
                    a = a_in[py, px]
                    g = _relu_grad(v, y_in[py, px], zero)
                    acc += g
                    # which of the four gets g, as two bits: compared with 0..3 one by one,
                    # LLVM makes a switch of it, and a random argmax mispredicts it
                    lo = (a & 1) != 0
                    hi = a >= 2
                    top = zero if hi else g
                    bot = g if hi else zero
                    r0[2 * px] = zero if lo else top
                    r0[2 * px + 1] = top if lo else zero
                    r1[2 * px] = zero if lo else bot
                    r1[2 * px + 1] = bot if lo else zero
        db[f] = acc
    # the last column and row that floor division leaves out of every window (apart from the
    # loops above: inside them, these tests made the loop 2-3x slower)
    for f in range(f0, f1):
        for n in range(nn):
            dst = dy2[f, n]
            if ow > 2 * pw:
                for h in range(oh):
                    dst[h, ow - 1] = zero
            if oh > 2 * ph:
                for x in range(ow):
                    dst[oh - 1, x] = zero


def _check(name: str, a: np.ndarray, ndim: int) -> None:
    if a.ndim != ndim or np.dtype(a.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"{name}: expected a float {ndim}-D array, got {a.dtype} {a.shape}")


def conv_relu_pool2x2_fwd(yt: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """relu(maxpool2x2(yt + b)), transposed to (N, F, ...), and the argmax, in one pass.

    Shape: yt (F, N, OH, OW) (the conv GEMM's output), b (F,) or None -> y (N, F, OH//2,
    OW//2), argmax (N, F, OH//2, OW//2) int32 in [0, 4) (as maxpool2d_fwd's).
    """
    _check("conv_relu_pool2x2_fwd", yt, 4)
    nf, nn, oh, ow = yt.shape
    if b is None:
        b = np.zeros(nf, dtype=yt.dtype)
    if b.shape != (nf,) or b.dtype != yt.dtype:
        raise ValueError(
            f"conv_relu_pool2x2_fwd: expected a bias ({nf},) {yt.dtype}, got {b.shape}"
        )
    y = np.empty((nn, nf, oh // 2, ow // 2), dtype=yt.dtype)
    arg = np.empty(y.shape, dtype=np.int32)
    grain = threads.grain(yt[0].size)  # filters per thread, at least
    threads.split(_conv_relu_pool_fwd, nf, np.ascontiguousarray(yt), b, y, arg, grain=grain)
    return y, arg


def conv_relu_pool2x2_bwd(
    dy: np.ndarray, arg: np.ndarray, y: np.ndarray, out_hw: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """The gradient at the conv GEMM's output, in its layout, and the bias gradient.

    Shape: dy, arg, y (N, F, PH, PW), out_hw (OH, OW) with PH = OH//2, PW = OW//2 ->
    dY2 (F, N*OH*OW), db (F,). dY2 = dy at each window's argmax where y > 0, else 0;
    db[f] = sum over n, py, px of the same masked dy.
    """
    _check("conv_relu_pool2x2_bwd", dy, 4)
    nn, nf, ph, pw = dy.shape
    oh, ow = (int(s) for s in out_hw)
    if (oh // 2, ow // 2) != (ph, pw) or arg.shape != dy.shape or y.shape != dy.shape:
        raise ValueError(
            f"conv_relu_pool2x2_bwd: dy {dy.shape}, argmax {arg.shape} and y {y.shape} must "
            f"all be (N, F, OH//2, OW//2) for OH, OW = {(oh, ow)}"
        )
    dy2 = np.empty((nf, nn, oh, ow), dtype=dy.dtype)
    db = np.empty(nf, dtype=dy.dtype)
    c = np.ascontiguousarray
    grain = threads.grain(dy2[0].size)  # filters per thread, at least
    threads.split(_conv_relu_pool_bwd, nf, c(dy), c(arg), c(y), dy2, db, grain=grain)
    return dy2.reshape(nf, nn * oh * ow), db
