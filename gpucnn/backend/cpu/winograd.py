"""Winograd convolution's tile transforms on the CPU (3×3 filters, stride 1; the matrices and
their derivation are in gpucnn.backend.winograd; the math of the whole layer is in
gpucnn.functional.winograd).

Layouts, with alpha = m + 2 and T = N·TH·TW tiles ordered (n, ty, tx):

    v  (alpha², T, C)   the input tiles d transformed, Bᵀ d B, per channel
    mt (alpha², T, F)   the products summed over channels, V[ξ] @ U[ξ]
    dm (alpha², T, F)   the output gradient's tiles transformed back, A dY Aᵀ

Tile (ty, tx) reads the (padded) input rows ty·m − P ... ty·m − P + alpha − 1 (likewise
columns) and writes the outputs ty·m ... ty·m + m − 1; a last partial tile reads zeros past
the image and its outputs past OH, OW are dropped (backward: read as zero gradient).

Why channels last inside: the transforms are the same small matrix sums for every channel, so
the innermost loop runs over C (or F) contiguous values and LLVM vectorises it. Each kernel
first copies one image into a zero-padded (rows, columns, channels) buffer (its transpose from
NCHW, paid once, in cache), transforms every tile of it, and moves on; the output side does
the reverse. The matrices' zero entries are skipped.

Every kernel takes the range of images [n0, n1) it works on, so gpucnn.backend.cpu.threads can
split a batch over the cores (images are independent; the bias gradient is kept per image and
summed afterwards in one fixed order, so results do not depend on the thread count).
"""

from __future__ import annotations

import numba
import numpy as np

from gpucnn.backend import formulas
from gpucnn.backend.cpu import threads
from gpucnn.backend.winograd import matrices, tile_grid, tiles

_max4 = numba.njit(inline="always", error_model="numpy")(formulas.max4_element)
_relu = numba.njit(inline="always", error_model="numpy")(formulas.relu_element)
_relu_grad = numba.njit(inline="always", error_model="numpy")(formulas.relu_grad_element)


@numba.njit(inline="always", error_model="numpy")
def _axpy(dst, src, coef, first):  # pragma: no cover - compiled
    """dst = coef * src (first) or dst += coef * src, over two 1-D views of equal length."""
    if first:
        for i in range(dst.shape[0]):
            dst[i] = coef * src[i]
    else:
        for i in range(dst.shape[0]):
            dst[i] += coef * src[i]


@numba.njit(inline="always", error_model="numpy")
def _gather(dst, src):  # pragma: no cover - compiled
    """dst[:] = src[:] for two 1-D views, one of them strided (a transpose, one pixel's
    channels at a time: the loop runs over the C or F values of one pixel)."""
    for i in range(dst.shape[0]):
        dst[i] = src[i]


@numba.njit(inline="always", error_model="numpy")
def _combine(dst, coefs, row, base, start, step, lo, hi):  # pragma: no cover - compiled
    """dst = sum over k of coefs[row, k] * base[start + k*step, lo:hi], zero coefficients
    skipped (``base`` is C-contiguous 2-D, so every term is a contiguous run)."""
    first = True
    for k in range(coefs.shape[1]):
        coef = coefs[row, k]
        if coef != 0:
            _axpy(dst, base[start + k * step, lo:hi], coef, first)
            first = False
    if first:
        dst[:] = 0


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _input_tf(x, bt, pad, th, tw, v, n0, n1):  # pragma: no cover - compiled
    _, nc, h, w = x.shape
    alpha = bt.shape[0]
    m = alpha - 2
    hp = th * m + 2  # rows the tiles read, padding included
    run = tw * nc  # one tile row's values at one point of the tiles: (tx, c), contiguous
    # The padded image, channels last, its columns split by phase: ph[y, q, X*C + c] is the
    # padded input at row y, column X*m + q, channel c. Column s of tile tx is then
    # ph[y, s % m, (tx + s // m)*C + c]: for every tile of the row at once, one contiguous run.
    ph = np.zeros((hp, m, (tw + 1) * nc), dtype=v.dtype)
    rows = np.empty((hp * alpha, run), dtype=v.dtype)  # (d B) of every row: [(y, b), (tx, c)]
    vv = v.reshape(alpha * alpha, v.shape[1] * nc)
    for n in range(n0, n1):
        for yy in range(h):  # the image in, transposed; the padding stays zero
            for xx in range(w):
                big, q = divmod(xx + pad, m)
                _gather(ph[yy + pad, q, big * nc : big * nc + nc], x[n, :, yy, xx])
        for y in range(hp):  # rows[y, b] = sum_s d[y, s] Bᵀ[b, s]
            for b in range(alpha):
                first = True
                for s in range(alpha):
                    coef = bt[b, s]
                    if coef != 0:
                        off = (s // m) * nc
                        _axpy(rows[y * alpha + b], ph[y, s % m, off : off + run], coef, first)
                        first = False
        for ty in range(th):  # v[a, b] = sum_r Bᵀ[a, r] rows[ty*m + r, b]
            lo = (n * th + ty) * run
            for a in range(alpha):
                for b in range(alpha):
                    dst = vv[a * alpha + b, lo : lo + run]
                    _combine(dst, bt, a, rows, ty * m * alpha + b, alpha, 0, run)


@numba.njit(inline="always", error_model="numpy")
def _out_row(mm, at, lo, q, out):  # pragma: no cover - compiled
    """One tile row's outputs Aᵀ M A, from the run of M's columns starting at ``lo``:
    out[a, j, tx*F + f] is output row a, column tx*m + j (q: scratch (m, alpha, run))."""
    m, alpha = at.shape
    run = out.shape[2]
    for a in range(m):  # q[a, s] = sum_r Aᵀ[a, r] M[r, s]
        for s in range(alpha):
            _combine(q[a * alpha + s], at, a, mm, s, alpha, lo, lo + run)
    for a in range(m):  # out[a, j] = sum_s Aᵀ[j, s] q[a, s]
        for j in range(m):
            _combine(out[a, j], at, j, q, a * alpha, 1, 0, run)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _output_tf(mt, at, b, th, tw, y, n0, n1):  # pragma: no cover - compiled
    _, nf, oh, ow = y.shape
    m, alpha = at.shape
    run = tw * nf
    mm = mt.reshape(alpha * alpha, mt.shape[1] * nf)
    q = np.empty((m * alpha, run), dtype=y.dtype)
    out = np.empty((m, m, run), dtype=y.dtype)
    for n in range(n0, n1):
        for ty in range(th):
            _out_row(mm, at, (n * th + ty) * run, q, out)
            for a in range(min(m, oh - ty * m)):  # out, with the bias, to (N, F, OH, OW)
                for xx in range(ow):
                    big, j = divmod(xx, m)
                    dst, src = y[n, :, ty * m + a, xx], out[a, j, big * nf : big * nf + nf]
                    for f in range(nf):
                        dst[f] = src[f] + b[f]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _output_relu_pool(mt, at, b, th, tw, y, arg, n0, n1):  # pragma: no cover - compiled
    _, nf, ph, pw = y.shape
    m, alpha = at.shape
    half = m // 2  # pool windows per tile and axis
    run = tw * nf
    mm = mt.reshape(alpha * alpha, mt.shape[1] * nf)
    zero = y.dtype.type(0)
    q = np.empty((m * alpha, run), dtype=y.dtype)
    out = np.empty((m, m, run), dtype=y.dtype)
    bias = np.empty(run, dtype=y.dtype)  # b[f] at every (tx, f)
    for i in range(run):
        bias[i] = b[i % nf]
    pooled = np.empty((half, half, run), dtype=y.dtype)  # [window row, column, (tx, f)]
    won_at = np.empty((half, half, run), dtype=np.int32)
    for n in range(n0, n1):
        for ty in range(th):
            if ty * half >= ph:
                break  # a last row of outputs that is in no pool window
            _out_row(mm, at, (n * th + ty) * run, q, out)
            for pi in range(half):
                for pj in range(half):
                    z00, z01 = out[2 * pi, 2 * pj], out[2 * pi, 2 * pj + 1]
                    z10, z11 = out[2 * pi + 1, 2 * pj], out[2 * pi + 1, 2 * pj + 1]
                    dst, won = pooled[pi, pj], won_at[pi, pj]
                    for i in range(run):
                        bf = bias[i]
                        best, at_ = _max4(z00[i] + bf, z01[i] + bf, z10[i] + bf, z11[i] + bf)
                        dst[i] = _relu(best, zero)
                        won[i] = at_
            for pi in range(min(half, ph - ty * half)):  # to (N, F, PH, PW)
                py = ty * half + pi
                for px in range(pw):
                    big, pj = divmod(px, half)
                    _gather(y[n, :, py, px], pooled[pi, pj, big * nf : big * nf + nf])
                    _gather(arg[n, :, py, px], won_at[pi, pj, big * nf : big * nf + nf])


@numba.njit(inline="always", error_model="numpy")
def _grad_row(g, a_mat, dd, lo, hrow):  # pragma: no cover - compiled
    """dM = A G Aᵀ for one tile row, into the run of dM's columns starting at ``lo``:
    g[i, j, tx*F + f] is the gradient at output row i, column tx*m + j (a_mat: A, which is
    (Aᵀ)ᵀ, (alpha, m); hrow: scratch (m, alpha, run))."""
    alpha, m = a_mat.shape
    run = g.shape[1]
    for i in range(m):  # hrow[i, b] = sum_j A[b, j] g[i, j]   (G Aᵀ)
        for b in range(alpha):
            _combine(hrow[i * alpha + b], a_mat, b, g, i * m, 1, 0, run)
    for a in range(alpha):  # dM[a, b] = sum_i A[a, i] hrow[i, b]   (A (G Aᵀ))
        for b in range(alpha):
            _combine(dd[a * alpha + b, lo : lo + run], a_mat, a, hrow, b, alpha, 0, run)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _grad_tf(dy, at, th, tw, dm, dbn, n0, n1):  # pragma: no cover - compiled
    _, nf, oh, ow = dy.shape
    m, alpha = at.shape
    run = tw * nf
    dd = dm.reshape(alpha * alpha, dm.shape[1] * nf)
    a_mat = np.ascontiguousarray(at.T)
    g = np.zeros((m * m, run), dtype=dm.dtype)  # [(i, j), (tx, f)]; past OH, OW: zero
    hrow = np.empty((m * alpha, run), dtype=dm.dtype)
    for n in range(n0, n1):
        db = dbn[n]
        db[:] = 0
        for ty in range(th):
            rows = min(m, oh - ty * m)
            for i in range(rows):  # the tile row's gradient in, channels last, by phase
                for xx in range(ow):
                    big, j = divmod(xx, m)
                    src = dy[n, :, ty * m + i, xx]
                    _gather(g[i * m + j, big * nf : big * nf + nf], src)
                    for f in range(nf):
                        db[f] += src[f]
            g[rows * m :] = 0
            _grad_row(g, a_mat, dd, (n * th + ty) * run, hrow)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _relu_pool_grad(dy, arg, y, at, th, tw, dm, dbn, n0, n1):  # pragma: no cover - compiled
    _, nf, ph, pw = dy.shape
    m, alpha = at.shape
    half = m // 2
    run = tw * nf
    dd = dm.reshape(alpha * alpha, dm.shape[1] * nf)
    zero = dm.dtype.type(0)
    a_mat = np.ascontiguousarray(at.T)
    gp = np.zeros((half, half, run), dtype=dm.dtype)  # ReLU's gradient per pool window
    wp = np.zeros((half, half, run), dtype=np.int32)  # and where in the window it goes
    g = np.empty((m * m, run), dtype=dm.dtype)
    hrow = np.empty((m * alpha, run), dtype=dm.dtype)
    for n in range(n0, n1):
        db = dbn[n]
        db[:] = 0
        for ty in range(th):
            gp[:] = 0  # windows past PH, PW (an odd last row or column): no gradient
            for pi in range(max(0, min(half, ph - ty * half))):
                py = ty * half + pi
                for px in range(pw):
                    big, pj = divmod(px, half)
                    gv, yv, av = dy[n, :, py, px], y[n, :, py, px], arg[n, :, py, px]
                    gdst = gp[pi, pj, big * nf : big * nf + nf]
                    wdst = wp[pi, pj, big * nf : big * nf + nf]
                    for f in range(nf):
                        v = _relu_grad(gv[f], yv[f], zero)
                        gdst[f] = v
                        wdst[f] = av[f]
                        db[f] += v
            for i in range(m):  # the gradient at the conv's output: at each winner, else 0
                for j in range(m):
                    here = (i % 2) * 2 + j % 2
                    src, won, dst = gp[i // 2, j // 2], wp[i // 2, j // 2], g[i * m + j]
                    for k in range(run):
                        dst[k] = src[k] if won[k] == here else zero
            _grad_row(g, a_mat, dd, (n * th + ty) * run, hrow)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _input_grad(dv, bt, pad, th, tw, dx, n0, n1):  # pragma: no cover - compiled
    _, nc, h, w = dx.shape
    alpha = bt.shape[0]
    m = alpha - 2
    hp = th * m + 2
    run = tw * nc
    vv = dv.reshape(alpha * alpha, dv.shape[1] * nc)
    b_mat = np.ascontiguousarray(bt.T)  # B
    ph = np.empty((hp, m, (tw + 1) * nc), dtype=dx.dtype)  # the padded dx, as _input_tf's
    prow = np.empty((alpha * alpha, run), dtype=dx.dtype)  # (B dV) of a tile row: [(r, b), (tx, c)]
    for n in range(n0, n1):
        ph[:] = 0
        for ty in range(th):
            lo = (n * th + ty) * run
            for r in range(alpha):  # prow[r, b] = sum_a B[r, a] dV[a, b]
                for b in range(alpha):
                    _combine(prow[r * alpha + b], b_mat, r, vv, b, alpha, lo, lo + run)
            for r in range(alpha):  # dxpad[tile row r, column s] += sum_b B[s, b] prow[r, b]
                for s in range(alpha):
                    off = (s // m) * nc
                    dst = ph[ty * m + r, s % m, off : off + run]
                    for b in range(alpha):
                        coef = b_mat[s, b]
                        if coef != 0:
                            _axpy(dst, prow[r * alpha + b], coef, False)
        for yy in range(h):  # the image's part of the padded buffer, back to (C, H, W)
            for xx in range(w):
                big, q = divmod(xx + pad, m)
                _gather(dx[n, :, yy, xx], ph[yy + pad, q, big * nc : big * nc + nc])


# -- launchers: shapes checked, buffers made, the batch split over threads -----------------


def _check(name: str, a: np.ndarray, ndim: int) -> None:
    if a.ndim != ndim or np.dtype(a.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"{name}: expected a float {ndim}-D array, got {a.dtype} {a.shape}")


def winograd_input_tf(x: np.ndarray, m: int, pad: int) -> np.ndarray:
    """The input tiles of a 3×3 stride-1 convolution transformed: V = Bᵀ d B per tile.

    Shape: x (N, C, H, W) -> v (alpha², N·TH·TW, C), alpha = m + 2, TH = ceil(OH / m),
    OH = H + 2·pad − 2 (likewise W).
    """
    _check("winograd_input_tf", x, 4)
    n, c, h, w = x.shape
    th, tw = tiles(h + 2 * pad - 2, m), tiles(w + 2 * pad - 2, m)
    bt = matrices(m, x.dtype)[0]
    v = np.empty(((m + 2) ** 2, n * th * tw, c), dtype=x.dtype)
    threads.split(_input_tf, n, np.ascontiguousarray(x), bt, pad, th, tw, v)
    return v


def winograd_output_tf(
    mt: np.ndarray, b: np.ndarray | None, out_shape: tuple, m: int
) -> np.ndarray:
    """The output tiles Y = Aᵀ M A plus the bias, in (N, F, OH, OW).

    Shape: mt (alpha², N·TH·TW, F), b (F,) or None, out_shape (N, F, OH, OW) -> y out_shape.
    """
    _check("winograd_output_tf", mt, 3)
    n, nf, oh, ow = (int(s) for s in out_shape)
    th, tw = tile_grid("winograd_output_tf", mt.shape[1], n, oh, ow, m)
    b = np.zeros(nf, dtype=mt.dtype) if b is None else b
    y = np.empty((n, nf, oh, ow), dtype=mt.dtype)
    threads.split(_output_tf, n, np.ascontiguousarray(mt), matrices(m, mt.dtype)[2], b, th, tw, y)
    return y


def winograd_relu_pool2x2_fwd(
    mt: np.ndarray, b: np.ndarray | None, out_shape: tuple, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """relu(maxpool2x2(Aᵀ M A + b)) and the argmax, without writing the convolution's output
    (an even m: each tile holds whole 2×2 windows).

    Shape: mt (alpha², N·TH·TW, F), out_shape (N, F, OH, OW) of the convolution ->
    y, argmax (N, F, OH // 2, OW // 2) (argmax as maxpool2d_fwd's: i*2 + j in [0, 4)).
    """
    _check("winograd_relu_pool2x2_fwd", mt, 3)
    n, nf, oh, ow = (int(s) for s in out_shape)
    if m % 2:
        raise ValueError(f"winograd_relu_pool2x2_fwd: tiles of {m} do not hold 2x2 windows")
    th, tw = tile_grid("winograd_relu_pool2x2_fwd", mt.shape[1], n, oh, ow, m)
    b = np.zeros(nf, dtype=mt.dtype) if b is None else b
    y = np.empty((n, nf, oh // 2, ow // 2), dtype=mt.dtype)
    arg = np.empty(y.shape, dtype=np.int32)
    at = matrices(m, mt.dtype)[2]
    threads.split(_output_relu_pool, n, np.ascontiguousarray(mt), at, b, th, tw, y, arg)
    return y, arg


def winograd_grad_tf(dy: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The output gradient's tiles transformed, dM = A dY Aᵀ, and the bias gradient.

    Shape: dy (N, F, OH, OW) -> dm (alpha², N·TH·TW, F), db (F,) (summed in float64).
    """
    _check("winograd_grad_tf", dy, 4)
    n, nf, oh, ow = dy.shape
    th, tw = tiles(oh, m), tiles(ow, m)
    dm = np.empty(((m + 2) ** 2, n * th * tw, nf), dtype=dy.dtype)
    dbn = np.empty((n, nf), dtype=np.float64)
    at = matrices(m, dy.dtype)[2]
    threads.split(_grad_tf, n, np.ascontiguousarray(dy), at, th, tw, dm, dbn)
    return dm, dbn.sum(axis=0).astype(dy.dtype)


def winograd_relu_pool2x2_bwd(
    dy: np.ndarray, arg: np.ndarray, y: np.ndarray, out_hw: tuple, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """dM = A G Aᵀ for G the gradient at the convolution's output under ReLU and the 2×2 max
    pool (dy at each window's argmax where y > 0, else 0), and the bias gradient.

    Shape: dy, arg, y (N, F, OH // 2, OW // 2), out_hw (OH, OW) -> dm (alpha², N·TH·TW, F),
    db (F,).
    """
    _check("winograd_relu_pool2x2_bwd", dy, 4)
    n, nf, ph, pw = dy.shape
    oh, ow = (int(s) for s in out_hw)
    if (oh // 2, ow // 2) != (ph, pw) or arg.shape != dy.shape or y.shape != dy.shape:
        raise ValueError(
            f"winograd_relu_pool2x2_bwd: dy {dy.shape}, argmax {arg.shape} and y {y.shape} "
            f"must all be (N, F, OH//2, OW//2) for OH, OW = {(oh, ow)}"
        )
    th, tw = tiles(oh, m), tiles(ow, m)
    dm = np.empty(((m + 2) ** 2, n * th * tw, nf), dtype=dy.dtype)
    dbn = np.empty((n, nf), dtype=np.float64)
    at = matrices(m, dy.dtype)[2]
    c = np.ascontiguousarray
    threads.split(_relu_pool_grad, n, c(dy), c(arg), c(y), at, th, tw, dm, dbn)
    return dm, dbn.sum(axis=0).astype(dy.dtype)


def winograd_input_grad(dv: np.ndarray, x_shape: tuple, m: int, pad: int) -> np.ndarray:
    """dx from the transformed-domain gradient dV: B dV Bᵀ per tile, overlapping tiles summed
    (the adjoint of winograd_input_tf).

    Shape: dv (alpha², N·TH·TW, C), x_shape (N, C, H, W) -> dx x_shape.
    """
    _check("winograd_input_grad", dv, 3)
    n, c, h, w = (int(s) for s in x_shape)
    th, tw = tile_grid("winograd_input_grad", dv.shape[1], n, h + 2 * pad - 2, w + 2 * pad - 2, m)
    dx = np.empty((n, c, h, w), dtype=dv.dtype)
    threads.split(
        _input_grad, n, np.ascontiguousarray(dv), matrices(m, dv.dtype)[0], pad, th, tw, dx
    )
    return dx
