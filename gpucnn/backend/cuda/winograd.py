"""Winograd convolution's tile transforms on the GPU: the CUDA twins of
gpucnn.backend.cpu.winograd (same functions, layouts and results up to rounding; the matrices
are gpucnn.backend.winograd's, the layer's math is gpucnn.functional.winograd).

Off on this backend (``WINOGRAD_TILE = 0`` in gpucnn.backend.cuda): written and checked
against the CPU twins in the simulator, compiled to PTX, waiting for a GPU to time them
against im2col and cuDNN and for the per-shape self-check of kernel paths to cover them.
A step captured into a CUDA graph would also need batched GEMM kernels (the alpha² products);
``matmul`` takes 2-D operands there.

One thread per (tile, channel) for the transforms of the input and of the output gradient,
per (tile, filter) for the output transforms, each holding its alpha² values in a local array
(alpha <= 6), and one thread per input pixel for dx, which gathers the tiles that cover it
(at most ceil(alpha / m)² of them), so nothing is added atomically: the same bits every run.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from gpucnn.backend import formulas
from gpucnn.backend.cuda.launch import array_module, check, config
from gpucnn.backend.numba_cuda import cuda
from gpucnn.backend.winograd import matrices, tile_grid, tiles

_max4 = cuda.jit(device=True)(formulas.max4_element)
_relu = cuda.jit(device=True)(formulas.relu_element)
_relu_grad = cuda.jit(device=True)(formulas.relu_grad_element)

MAX_ALPHA2 = 36  # F(4×4, 3×3): alpha = 6


@cuda.jit(device=True)
def _split(e, channels, th, tw):  # pragma: no cover - device code
    """Element e of a (tile, channel) grid, channel fastest: (t, channel, n, ty, tx)."""
    t = e // channels
    n = t // (th * tw)
    r0 = t - n * (th * tw)
    ty = r0 // tw
    return t, e - t * channels, n, ty, r0 - ty * tw


@cuda.jit(cache=True)
def winograd_input_tf_kernel(x, bt, pad, th, tw, zero, v):  # pragma: no cover - device code
    nn, nc, h, w = x.shape
    alpha = bt.shape[0]
    m = alpha - 2
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, nn * th * tw * nc, step):  # c fastest: adjacent threads, adjacent v
        t, c, n, ty, tx = _split(e, nc, th, tw)
        d = cuda.local.array(MAX_ALPHA2, dtype=v.dtype)
        for r in range(alpha):
            yy = ty * m + r - pad
            for s in range(alpha):
                xx = tx * m + s - pad
                val = zero
                if 0 <= yy < h and 0 <= xx < w:
                    val = x[n, c, yy, xx]
                d[r * alpha + s] = val
        for a in range(alpha):
            for b in range(alpha):
                acc = zero
                for r in range(alpha):
                    ca = bt[a, r]
                    if ca != 0:
                        for s in range(alpha):
                            acc += ca * bt[b, s] * d[r * alpha + s]
                v[a * alpha + b, t, c] = acc


@cuda.jit(device=True)
def _tile_out(mt, at, t, f, zero, out):  # pragma: no cover - device code
    """out[i*m + j] = (Aᵀ M_t A)[i, j] for tile t, filter f."""
    m, alpha = at.shape
    for i in range(m):
        for j in range(m):
            acc = zero
            for r in range(alpha):
                ci = at[i, r]
                if ci != 0:
                    for s in range(alpha):
                        acc += ci * at[j, s] * mt[r * alpha + s, t, f]
            out[i * m + j] = acc


@cuda.jit(cache=True)
def winograd_output_tf_kernel(mt, at, b, th, tw, zero, y):  # pragma: no cover - device code
    nn, nf, oh, ow = y.shape
    m = at.shape[0]
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, nn * th * tw * nf, step):
        t, f, n, ty, tx = _split(e, nf, th, tw)
        out = cuda.local.array(16, dtype=y.dtype)  # m*m <= 16
        _tile_out(mt, at, t, f, zero, out)
        for i in range(m):
            yy = ty * m + i
            if yy < oh:
                for j in range(m):
                    xx = tx * m + j
                    if xx < ow:
                        y[n, f, yy, xx] = out[i * m + j] + b[f]


@cuda.jit(cache=True)
def winograd_relu_pool_fwd_kernel(mt, at, b, zero, th, tw, y, arg):  # pragma: no cover
    nn, nf, ph, pw = y.shape
    m = at.shape[0]
    half = m // 2
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, nn * th * tw * nf, step):
        t, f, n, ty, tx = _split(e, nf, th, tw)
        if ty * half >= ph or tx * half >= pw:
            continue
        out = cuda.local.array(16, dtype=y.dtype)
        _tile_out(mt, at, t, f, zero, out)
        bf = b[f]
        for pi in range(half):
            py = ty * half + pi
            if py < ph:
                for pj in range(half):
                    px = tx * half + pj
                    if px < pw:
                        i0 = 2 * pi * m + 2 * pj
                        best, won = _max4(
                            out[i0] + bf, out[i0 + 1] + bf, out[i0 + m] + bf, out[i0 + m + 1] + bf
                        )
                        y[n, f, py, px] = _relu(best, zero)
                        arg[n, f, py, px] = won


@cuda.jit(device=True)
def _tile_grad(g, at, t, f, zero, dm):  # pragma: no cover - device code
    """dm[:, t, f] = A g Aᵀ for one tile's output gradient g (m*m values)."""
    m, alpha = at.shape
    for a in range(alpha):
        for b in range(alpha):
            acc = zero
            for i in range(m):
                ca = at[i, a]
                if ca != 0:
                    for j in range(m):
                        acc += ca * at[j, b] * g[i * m + j]
            dm[a * alpha + b, t, f] = acc


@cuda.jit(cache=True)
def winograd_grad_tf_kernel(dy, at, th, tw, zero, dm):  # pragma: no cover - device code
    nn, nf, oh, ow = dy.shape
    m = at.shape[0]
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, nn * th * tw * nf, step):
        t, f, n, ty, tx = _split(e, nf, th, tw)
        g = cuda.local.array(16, dtype=dm.dtype)
        for i in range(m):
            for j in range(m):
                yy, xx = ty * m + i, tx * m + j
                val = zero
                if yy < oh and xx < ow:
                    val = dy[n, f, yy, xx]
                g[i * m + j] = val
        _tile_grad(g, at, t, f, zero, dm)


@cuda.jit(cache=True)
def winograd_relu_pool_bwd_kernel(dy, arg, y, at, zero, th, tw, dm):  # pragma: no cover
    nn, nf, ph, pw = dy.shape
    m = at.shape[0]
    half = m // 2
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, nn * th * tw * nf, step):
        t, f, n, ty, tx = _split(e, nf, th, tw)
        g = cuda.local.array(16, dtype=dm.dtype)
        for i in range(m):
            for j in range(m):
                py, px = ty * half + i // 2, tx * half + j // 2
                val = zero
                if py < ph and px < pw and arg[n, f, py, px] == (i % 2) * 2 + j % 2:
                    val = _relu_grad(dy[n, f, py, px], y[n, f, py, px], zero)
                g[i * m + j] = val
        _tile_grad(g, at, t, f, zero, dm)


@cuda.jit(cache=True)
def winograd_input_grad_kernel(dv, bt, pad, th, tw, zero, dx):  # pragma: no cover - device code
    nn, nc, h, w = dx.shape
    alpha = bt.shape[0]
    m = alpha - 2
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, nn * nc * h * w, step):
        plane = e // (h * w)
        r0 = e - plane * (h * w)
        yy = r0 // w
        xx = r0 - yy * w
        n = plane // nc
        c = plane - n * nc
        py, px = yy + pad, xx + pad  # in the padded frame the tiles read
        acc = zero
        ty1, tx1 = py // m, px // m  # the last tiles that reach it (selects, not min():
        ty1 = ty1 if ty1 < th else th - 1  # Numba's min compiles through a device dispatcher)
        tx1 = tx1 if tx1 < tw else tw - 1
        lo_y, lo_x = py - alpha + m, px - alpha + m  # the first tiles that reach this pixel
        ty0 = lo_y // m if lo_y > 0 else 0
        tx0 = lo_x // m if lo_x > 0 else 0
        for ty in range(ty0, ty1 + 1):
            r = py - ty * m  # this pixel's row in tile ty, 0 <= r < alpha
            if r < alpha:
                for tx in range(tx0, tx1 + 1):
                    s = px - tx * m
                    if s < alpha:
                        t = (n * th + ty) * tw + tx
                        for a in range(alpha):  # (B dV Bᵀ)[r, s] = sum Bᵀ[a, r] dV[a, b] Bᵀ[b, s]
                            ca = bt[a, r]
                            if ca != 0:
                                for b in range(alpha):
                                    acc += ca * bt[b, s] * dv[a * alpha + b, t, c]
        dx[n, c, yy, xx] = acc


@functools.lru_cache(maxsize=16)
def _on_device(xp: Any, m: int, dtype: str) -> tuple[Any, Any]:
    """(Bᵀ, Aᵀ) of F(m×m, 3×3) as device arrays, made once per array module, tile and dtype."""
    bt, _, at = matrices(m, np.dtype(dtype))
    return xp.asarray(bt), xp.asarray(at)


def winograd_input_tf(x: Any, m: int, pad: int) -> Any:
    """The input tiles transformed, V = Bᵀ d B (see the CPU twin).

    Shape: x (N, C, H, W) -> v (alpha², N·TH·TW, C).
    """
    check("winograd_input_tf", x, 4)
    xp = array_module(x)
    n, c, h, w = x.shape
    th, tw = tiles(h + 2 * pad - 2, m), tiles(w + 2 * pad - 2, m)
    v = xp.empty(((m + 2) ** 2, n * th * tw, c), dtype=x.dtype)
    bt, _ = _on_device(xp, m, np.dtype(x.dtype).str)
    winograd_input_tf_kernel[config(n * th * tw * c)](x, bt, pad, th, tw, x.dtype.type(0), v)
    return v


def winograd_output_tf(mt: Any, b: Any, out_shape: tuple, m: int) -> Any:
    """Y = Aᵀ M A plus the bias. Shape: mt (alpha², N·TH·TW, F) -> y out_shape (N, F, OH, OW)."""
    check("winograd_output_tf", mt, 3)
    xp = array_module(mt)
    n, nf, oh, ow = (int(s) for s in out_shape)
    th, tw = tile_grid("winograd_output_tf", mt.shape[1], n, oh, ow, m)
    b = xp.zeros(nf, dtype=mt.dtype) if b is None else b
    y = xp.empty((n, nf, oh, ow), dtype=mt.dtype)
    _, at = _on_device(xp, m, np.dtype(mt.dtype).str)
    zero = mt.dtype.type(0)
    winograd_output_tf_kernel[config(mt.shape[1] * nf)](mt, at, b, th, tw, zero, y)
    return y


def winograd_relu_pool2x2_fwd(mt: Any, b: Any, out_shape: tuple, m: int) -> tuple[Any, Any]:
    """relu(maxpool2x2(Aᵀ M A + b)) and the argmax. Shape: mt (alpha², N·TH·TW, F),
    out_shape (N, F, OH, OW) -> y, argmax (N, F, OH // 2, OW // 2)."""
    check("winograd_relu_pool2x2_fwd", mt, 3)
    xp = array_module(mt)
    n, nf, oh, ow = (int(s) for s in out_shape)
    if m % 2:
        raise ValueError(f"winograd_relu_pool2x2_fwd: tiles of {m} do not hold 2x2 windows")
    th, tw = tile_grid("winograd_relu_pool2x2_fwd", mt.shape[1], n, oh, ow, m)
    b = xp.zeros(nf, dtype=mt.dtype) if b is None else b
    y = xp.empty((n, nf, oh // 2, ow // 2), dtype=mt.dtype)
    arg = xp.empty(y.shape, dtype=np.int32)
    _, at = _on_device(xp, m, np.dtype(mt.dtype).str)
    zero = mt.dtype.type(0)
    winograd_relu_pool_fwd_kernel[config(mt.shape[1] * nf)](mt, at, b, zero, th, tw, y, arg)
    return y, arg


def winograd_grad_tf(dy: Any, m: int) -> tuple[Any, Any]:
    """dM = A dY Aᵀ and the bias gradient. Shape: dy (N, F, OH, OW) -> dm (alpha², N·TH·TW,
    F), db (F,)."""
    xp = array_module(dy)
    dy = xp.ascontiguousarray(dy)
    check("winograd_grad_tf", dy, 4)
    n, nf, oh, ow = dy.shape
    th, tw = tiles(oh, m), tiles(ow, m)
    dm = xp.empty(((m + 2) ** 2, n * th * tw, nf), dtype=dy.dtype)
    _, at = _on_device(xp, m, np.dtype(dy.dtype).str)
    winograd_grad_tf_kernel[config(n * th * tw * nf)](dy, at, th, tw, dy.dtype.type(0), dm)
    return dm, dy.sum(axis=(0, 2, 3))


def winograd_relu_pool2x2_bwd(dy: Any, arg: Any, y: Any, out_hw: tuple, m: int) -> tuple[Any, Any]:
    """dM = A G Aᵀ for the gradient G at the conv output under ReLU and the 2×2 max pool, and
    the bias gradient. Shape: dy, arg, y (N, F, OH // 2, OW // 2) -> dm, db (F,)."""
    xp = array_module(dy)
    dy = xp.ascontiguousarray(dy)
    check("winograd_relu_pool2x2_bwd", dy, 4)
    n, nf, ph, pw = dy.shape
    oh, ow = (int(s) for s in out_hw)
    if (oh // 2, ow // 2) != (ph, pw) or tuple(arg.shape) != tuple(dy.shape):
        raise ValueError(
            f"winograd_relu_pool2x2_bwd: dy {tuple(dy.shape)} and argmax {tuple(arg.shape)} "
            f"must be (N, F, OH//2, OW//2) for OH, OW = {(oh, ow)}"
        )
    th, tw = tiles(oh, m), tiles(ow, m)
    dm = xp.empty(((m + 2) ** 2, n * th * tw, nf), dtype=dy.dtype)
    _, at = _on_device(xp, m, np.dtype(dy.dtype).str)
    zero = dy.dtype.type(0)
    winograd_relu_pool_bwd_kernel[config(n * th * tw * nf)](dy, arg, y, at, zero, th, tw, dm)
    g = xp.where(y > zero, dy, zero)  # ReLU's gradient rule (formulas.relu_grad_element)
    return dm, g.sum(axis=(0, 2, 3))


def winograd_input_grad(dv: Any, x_shape: tuple, m: int, pad: int) -> Any:
    """dx = B dV Bᵀ per tile, overlaps summed (each pixel gathers its tiles). Shape: dv
    (alpha², N·TH·TW, C), x_shape (N, C, H, W) -> dx x_shape."""
    check("winograd_input_grad", dv, 3)
    xp = array_module(dv)
    n, c, h, w = (int(s) for s in x_shape)
    th, tw = tile_grid("winograd_input_grad", dv.shape[1], n, h + 2 * pad - 2, w + 2 * pad - 2, m)
    dx = xp.empty((n, c, h, w), dtype=dv.dtype)
    bt, _ = _on_device(xp, m, np.dtype(dv.dtype).str)
    zero = dv.dtype.type(0)
    winograd_input_grad_kernel[config(n * c * h * w)](dv, bt, pad, th, tw, zero, dx)
    return dx
