"""Direct convolution on the GPU for layers with few taps (C*k*k <= MAX_TAPS; a network's first
layer, one input channel and a 3×3 filter, has 9): no im2col columns, no GEMM (the CPU twins,
and the formulas, are in gpucnn.backend.cpu.direct).

Forward, direct_fwd_kernel: one thread per output position (n, oh, ow), numbered so a warp
holds adjacent ow of one image. It reads its C*k*k input taps once into a per-thread local
array (registers or L1-backed local memory, as the compiler places it; taps in the padding
are left out, as the CPU skips them) and then, for each filter f,
adds b[f] and the taps times w[f] (the same address in every thread of a warp: a broadcast)
and stores y[n, f, oh, ow], coalesced. The input is read once and the output written once:
the columns' 9 copies of the image, their GEMM and the (F, N, ...) -> (N, F, ...) transpose
are gone.

Backward, direct_bwd_kernel on a 2-D grid (as fused.py's backward): blockIdx.y is the filter
f; the blocks along x split its N*OH*OW positions. Each thread adds dy and dy times each tap
into C*k*k + 1 local sums, the block (BWD_THREADS threads) adds its threads' sums in shared
memory (one fixed tree for all the taps), and writes one partial per (block, f, tap);
gemm_reduce_kernel adds the blocks' partials in order. No atomics: dw and db are the same bits
from run to run.

Both launchers are checked against im2col + cuBLAS on each shape's first use on a device
(selfcheck.py, path "direct"); where they disagreed, they compute through im2col and a GEMM.

No float literal in a kernel: zero arrives as an argument of the data's dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import int32

from gpucnn.backend.cuda import gemm as gemm_module
from gpucnn.backend.cuda import selfcheck, window
from gpucnn.backend.cuda.launch import (
    array_module,
    check,
    config,
    filter_grid,
    out_size,
    stream,
)
from gpucnn.backend.numba_cuda import cuda

MAX_TAPS = 32  # C*k*k a thread keeps in its local arrays (their fixed size)
SUMS = MAX_TAPS + 1  # a backward thread's sums: the taps', then the bias's
BWD_THREADS = 64  # threads of a backward block: its shared sums, (33, 64) float64, fit in 17 KB


@cuda.jit(cache=True)
def direct_fwd_kernel(x, k, w, b, stride, pad, y):  # pragma: no cover - device code
    nn, nc, h, wd = x.shape
    nf = w.shape[0]  # w is (F, C*k*k)
    _, _, oh, ow = y.shape
    vals = cuda.local.array(MAX_TAPS, dtype=x.dtype)
    at = cuda.local.array(MAX_TAPS, dtype=int32)  # (c*k + i)*k + j of each tap inside
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, nn * oh * ow, step):
        n = e // (oh * ow)
        r = e - n * (oh * ow)
        oy = r // ow
        ox = r - oy * ow
        m = 0
        for c in range(nc):
            for i in range(k):
                hy = oy * stride - pad + i
                for j in range(k):
                    wx = ox * stride - pad + j
                    if 0 <= hy < h and 0 <= wx < wd:
                        vals[m] = x[n, c, hy, wx]
                        at[m] = (c * k + i) * k + j
                        m += 1
        for f in range(nf):
            acc = b[f]
            for q in range(m):
                acc += w[f, at[q]] * vals[q]
            y[n, f, oy, ox] = acc


@cuda.jit(cache=True)
def direct_bwd_kernel(dy, x, k, stride, pad, zero, partials):  # pragma: no cover - device code
    nn, nc, h, wd = x.shape
    _, _, oh, ow = dy.shape
    taps = nc * k * k
    f = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    acc = cuda.local.array(SUMS, dtype=dy.dtype)
    for t in range(taps + 1):
        acc[t] = zero
    for e in range(
        cuda.blockIdx.x * cuda.blockDim.x + tid, nn * oh * ow, cuda.gridDim.x * cuda.blockDim.x
    ):
        n = e // (oh * ow)
        r = e - n * (oh * ow)
        oy = r // ow
        ox = r - oy * ow
        g = dy[n, f, oy, ox]
        acc[taps] += g
        for c in range(nc):
            for i in range(k):
                hy = oy * stride - pad + i
                for j in range(k):
                    wx = ox * stride - pad + j
                    if 0 <= hy < h and 0 <= wx < wd:
                        acc[(c * k + i) * k + j] += g * x[n, c, hy, wx]
    sums = cuda.shared.array((SUMS, BWD_THREADS), dtype=dy.dtype)
    for t in range(taps + 1):
        sums[t, tid] = acc[t]
    cuda.syncthreads()
    half = BWD_THREADS // 2
    while half > 0:  # a fixed tree, every tap at once: the same bits from run to run
        if tid < half:
            for t in range(taps + 1):
                sums[t, tid] += sums[t, tid + half]
        cuda.syncthreads()
        half //= 2
    if tid <= taps:
        partials[cuda.blockIdx.x, f, tid] = sums[tid, 0]


def _check_taps(name: str, c: int, k: int) -> None:
    if c * k * k > MAX_TAPS:
        raise ValueError(
            f"{name}: C*k*k = {c}*{k}*{k} = {c * k * k} taps, more than the {MAX_TAPS} a "
            "thread keeps in its local arrays; convolve through im2col instead"
        )


def conv2d_direct_fwd(x: Any, w: Any, b: Any, stride: int, pad: int) -> Any:
    """Convolve without columns: y = conv(x, w) + b, in one launch.

    Shape: x (N, C, H, W), w (F, C, k, k) with C*k*k <= MAX_TAPS, b (F,) or None ->
    y (N, F, OH, OW), OH = floor((H + 2*pad - k) / stride) + 1 (likewise OW).
    """
    xp = array_module(x)
    x = xp.ascontiguousarray(x)
    check("conv2d_direct_fwd", x, 4)
    check("conv2d_direct_fwd", w, 4, contiguous=False)
    n, c, h, wd = x.shape
    f, _, k, _ = w.shape
    _check_taps("conv2d_direct_fwd", c, k)
    w2 = xp.ascontiguousarray(w).reshape(f, c * k * k)
    bias = xp.zeros(f, dtype=x.dtype) if b is None else b
    oh, ow = out_size(h, k, stride, pad), out_size(wd, k, stride, pad)

    def fast() -> tuple:
        y = xp.empty((n, f, oh, ow), x.dtype)
        direct_fwd_kernel[config(n * oh * ow)](x, k, w2, bias, stride, pad, y)
        return (y,)

    def reference(product: Any) -> tuple:  # im2col + a GEMM, as functional.conv2d_forward
        cols = window.im2col(x, k, stride, pad)
        yt = product(w2, cols).reshape(f, n, oh, ow).transpose(1, 0, 2, 3)
        y = xp.empty((n, f, oh, ow), x.dtype)
        xp.add(yt, bias[None, :, None, None], out=y)
        return (y,), lambda: (selfcheck.abs_product_max(w2, cols) + selfcheck.max_abs(bias),)

    shape = ("fwd", tuple(x.shape), tuple(w.shape), stride, pad, np.dtype(x.dtype).str)
    (y,) = selfcheck.run("direct", shape, fast, reference, ("y",), gemm_module.matmul)
    return y


def conv2d_direct_bwd(dy: Any, x: Any, k: int, stride: int, pad: int) -> tuple[Any, Any]:
    """The weight and bias gradients of conv2d_direct_fwd, without columns (2 launches).

    Shape: dy (N, F, OH, OW), x (N, C, H, W) -> dw (F, C, k, k), db (F,).
    """
    xp = array_module(dy)
    dy, x = xp.ascontiguousarray(dy), xp.ascontiguousarray(x)
    check("conv2d_direct_bwd", dy, 4)
    check("conv2d_direct_bwd", x, 4)
    n, c, _, _ = x.shape
    nf = dy.shape[1]
    _check_taps("conv2d_direct_bwd", c, k)
    taps = c * k * k

    def fast() -> tuple:
        grid = filter_grid(nf, n * dy.shape[2] * dy.shape[3], BWD_THREADS)
        partials = xp.empty((grid[0], nf, taps + 1), dtype=dy.dtype)
        zero = dy.dtype.type(0)
        direct_bwd_kernel[grid, BWD_THREADS, stream()](dy, x, k, stride, pad, zero, partials)
        out = xp.empty((nf, taps + 1), dtype=dy.dtype)
        one = dy.dtype.type(1)
        gemm_module.gemm_reduce_kernel[config(out.size)](partials, one, zero, False, zero, out)
        return out[:, :taps].reshape(nf, c, k, k), out[:, taps].copy()

    def reference(product: Any) -> tuple:  # as functional.conv2d_backward through im2col
        cols = window.im2col(x, k, stride, pad)
        dy2 = xp.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(nf, -1)
        dw = product(dy2, cols.T).reshape(nf, c, k, k)
        scales = lambda: (  # noqa: E731
            selfcheck.abs_product_max(dy2, cols.T),
            selfcheck.finite_abs(dy2).sum(axis=1).max(),
        )
        return (dw, dy2.sum(axis=1)), scales

    shape = ("bwd", tuple(dy.shape), tuple(x.shape), k, stride, pad, np.dtype(dy.dtype).str)
    return selfcheck.run("direct", shape, fast, reference, ("dw", "db"), gemm_module.matmul)
