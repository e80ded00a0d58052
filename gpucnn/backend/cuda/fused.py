"""A convolution's epilogue fused on the GPU: bias + ReLU + 2×2 stride-2 max pool straight from
the GEMM output, and its backward straight into the layout of the weight and input GEMMs (the
CPU twins, and the formulas, are in gpucnn.backend.cpu.fused).

Forward, conv_relu_pool_fwd_kernel: one thread per pooled output, numbered in (F, N, PH, PW)
order so that a warp reads adjacent windows of one yt plane; four loads, the bias, three
selects (the first maximum wins; a NaN wins, as maxpool2x2_fwd_kernel), the ReLU rule of
formulas, and two stores (y and the argmax, in (N, F, PH, PW)). No (N, F, OH, OW) tensor.

Backward, conv_relu_pool_bwd_kernel on a 2-D grid: blockIdx.y is the filter f, and the blocks
along x split its N * ceil(OH/2) * ceil(OW/2) tiles of 2×2 (as pool.py's pool_tile_bwd_kernel:
the tiles cover dY2 once, so each thread writes its tile whole: g = dy where y > 0 at the
argmax, zero elsewhere, and zero in the tiles of the last row or column no window reaches; no
memset, no atomics). Each thread adds its g's in registers, the block adds its threads' sums
in shared memory (a fixed tree), and writes one partial per (f, block); bias_grad_reduce_kernel
(one thread per filter) adds a filter's partials in order. No atomics: db is the same bits
from run to run (not the CPU's: another order of the same sum). dY2 is the CPU's bits.

Both launchers are checked on each shape's first use on a device against the layers'
kernels one by one (selfcheck.py, path "fused"); where they disagreed, those kernels run.

No float literal in a kernel: zero arrives as an argument of the data's dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpucnn.backend import formulas
from gpucnn.backend.cuda import elementwise, pool, selfcheck
from gpucnn.backend.cuda import gemm as gemm_module
from gpucnn.backend.cuda.launch import THREADS, array_module, check, config, filter_grid, stream
from gpucnn.backend.numba_cuda import cuda

_max4 = cuda.jit(device=True)(formulas.max4_element)
_relu = cuda.jit(device=True)(formulas.relu_element)
_relu_grad = cuda.jit(device=True)(formulas.relu_grad_element)


@cuda.jit(cache=True)
def conv_relu_pool_fwd_kernel(yt, b, zero, y, arg):  # pragma: no cover - device code
    nf, nn, _, _ = yt.shape
    _, _, ph, pw = y.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, nf * nn * ph * pw, step):
        plane = e // (ph * pw)  # f * N + n
        r = e - plane * (ph * pw)
        py = r // pw
        px = r - py * pw
        f = plane // nn
        n = plane - f * nn
        bf = b[f]
        a = yt[f, n, 2 * py, 2 * px] + bf
        bb = yt[f, n, 2 * py, 2 * px + 1] + bf
        c = yt[f, n, 2 * py + 1, 2 * px] + bf
        d = yt[f, n, 2 * py + 1, 2 * px + 1] + bf
        best, won = _max4(a, bb, c, d)
        y[n, f, py, px] = _relu(best, zero)
        arg[n, f, py, px] = won


@cuda.jit(cache=True)
def conv_relu_pool_bwd_kernel(dy, arg, y, zero, dy2, partials):  # pragma: no cover - device
    nf, nn, oh, ow = dy2.shape
    _, _, ph, pw = dy.shape
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    f = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    acc = zero
    for e in range(
        cuda.blockIdx.x * cuda.blockDim.x + tid, nn * th * tw, cuda.gridDim.x * cuda.blockDim.x
    ):
        n = e // (th * tw)
        r = e - n * (th * tw)
        ty = r // tw
        tx = r - ty * tw
        g = zero
        a = 0
        if ty < ph and tx < pw:
            a = arg[n, f, ty, tx]
            g = _relu_grad(dy[n, f, ty, tx], y[n, f, ty, tx], zero)
            acc += g
        for i in range(2):
            h = 2 * ty + i
            if h < oh:
                for j in range(2):
                    w = 2 * tx + j
                    if w < ow:
                        dy2[f, n, h, w] = g if a == 2 * i + j else zero
    sums = cuda.shared.array(THREADS, dtype=dy.dtype)
    sums[tid] = acc
    cuda.syncthreads()
    half = THREADS // 2
    while half > 0:  # a fixed tree: the same bits from run to run
        if tid < half:
            sums[tid] += sums[tid + half]
        cuda.syncthreads()
        half //= 2
    if tid == 0:
        partials[f, cuda.blockIdx.x] = sums[0]


@cuda.jit(cache=True)
def bias_grad_reduce_kernel(partials, zero, db):  # pragma: no cover - device code
    nf, parts = partials.shape
    f = cuda.grid(1)
    if f < nf:
        acc = zero
        for q in range(parts):
            acc += partials[f, q]
        db[f] = acc


def conv_relu_pool2x2_fwd(yt: Any, b: Any) -> tuple[Any, Any]:
    """relu(maxpool2x2(yt + b)), transposed to (N, F, ...), and the argmax, in one launch.

    Shape: yt (F, N, OH, OW) (the conv GEMM's output), b (F,) or None -> y (N, F, OH//2,
    OW//2), argmax (N, F, OH//2, OW//2) int32 in [0, 4) (as maxpool2d_fwd's).
    """
    check("conv_relu_pool2x2_fwd", yt, 4)
    xp = array_module(yt)
    nf, nn, oh, ow = yt.shape
    if b is None:
        b = xp.zeros(nf, dtype=yt.dtype)
    if tuple(b.shape) != (nf,) or b.dtype != yt.dtype:
        raise ValueError(
            f"conv_relu_pool2x2_fwd: expected a bias ({nf},) {yt.dtype}, got {b.shape}"
        )

    def fast() -> tuple:
        y = xp.empty((nn, nf, oh // 2, ow // 2), dtype=yt.dtype)
        arg = xp.empty(y.shape, dtype=np.int32)
        conv_relu_pool_fwd_kernel[config(y.size)](yt, b, yt.dtype.type(0), y, arg)
        return y, arg

    def reference(product: Any) -> tuple:  # as Sequential runs the layers: pool, then ReLU
        z = xp.empty((nn, nf, oh, ow), dtype=yt.dtype)
        xp.add(yt.transpose(1, 0, 2, 3), b[None, :, None, None], out=z)
        pooled, arg = pool.maxpool2d_fwd(z, 2, 2, 0)
        return (elementwise.relu_fwd(pooled), arg), lambda: (selfcheck.max_abs(z), None)

    shape = ("fwd", tuple(yt.shape), np.dtype(yt.dtype).str)
    return selfcheck.run("fused", shape, fast, reference, ("y", "argmax"), gemm_module.matmul)


def conv_relu_pool2x2_bwd(dy: Any, arg: Any, y: Any, out_hw: tuple) -> tuple[Any, Any]:
    """The gradient at the conv GEMM's output, in its layout, and the bias gradient (2 launches).

    Shape: dy, arg, y (N, F, PH, PW), out_hw (OH, OW) with PH = OH//2, PW = OW//2 ->
    dY2 (F, N*OH*OW), db (F,). dY2 = dy at each window's argmax where y > 0, else 0;
    db[f] = sum over n, py, px of the same masked dy.
    """
    xp = array_module(dy)
    dy = xp.ascontiguousarray(dy)
    check("conv_relu_pool2x2_bwd", dy, 4)
    check("conv_relu_pool2x2_bwd", y, 4)
    nn, nf, ph, pw = dy.shape
    oh, ow = (int(s) for s in out_hw)
    if (
        (oh // 2, ow // 2) != (ph, pw)
        or tuple(arg.shape) != tuple(dy.shape)
        or tuple(y.shape) != tuple(dy.shape)
        or np.dtype(arg.dtype) != np.dtype(np.int32)
    ):
        raise ValueError(
            f"conv_relu_pool2x2_bwd: dy {tuple(dy.shape)}, an int32 argmax {tuple(arg.shape)} "
            f"and y {tuple(y.shape)} must all be (N, F, OH//2, OW//2) for OH, OW = {(oh, ow)}"
        )

    def fast() -> tuple:
        zero = dy.dtype.type(0)
        dy2 = xp.empty((nf, nn, oh, ow), dtype=dy.dtype)
        grid = filter_grid(nf, nn * ((oh + 1) // 2) * ((ow + 1) // 2))
        partials = xp.empty((nf, grid[0]), dtype=dy.dtype)
        conv_relu_pool_bwd_kernel[grid, THREADS, stream()](dy, arg, y, zero, dy2, partials)
        db = xp.empty(nf, dtype=dy.dtype)
        bias_grad_reduce_kernel[config(nf)](partials, zero, db)
        return dy2.reshape(nf, nn * oh * ow), db

    def reference(product: Any) -> tuple:  # the ReLU's backward, then the max pool's
        g = elementwise.relu_bwd(dy, y)
        dz = pool.maxpool2d_bwd(g, arg, (nn, nf, oh, ow), 2, 2, 0)
        dy2 = xp.ascontiguousarray(dz.transpose(1, 0, 2, 3)).reshape(nf, nn * oh * ow)
        db = g.sum(axis=(0, 2, 3))
        return (dy2, db), lambda: (
            selfcheck.max_abs(g),
            selfcheck.finite_abs(g).sum(axis=(0, 2, 3)).max(),
        )

    shape = ("bwd", tuple(dy.shape), (oh, ow), np.dtype(dy.dtype).str)
    return selfcheck.run("fused", shape, fast, reference, ("dY2", "db"), gemm_module.matmul)
