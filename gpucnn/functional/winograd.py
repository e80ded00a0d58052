"""3×3 stride-1 convolution by Winograd's minimal filtering algorithm F(m×m, 3×3).

The convolution of functional/conv.py, y[n, f] = b[f] + sum_c w[f, c] ⋆ xpad[n, c], computed
tile by tile (gpucnn.backend.winograd has the matrices Bᵀ, G, Aᵀ and where they come from):
the output is cut into m×m tiles, tile t of input channel c is the (m+2)×(m+2) patch d[t, c]
under it, and with alpha = m + 2 and ξ running over the alpha² points of a tile,

    U[ξ] = (G w[f, c] Gᵀ)[ξ]      filters, (C, F) per ξ          filter_transform, once a step
    V[ξ] = (Bᵀ d[t, c] B)[ξ]      input tiles, (T, C) per ξ      kernels.winograd_input_tf
    M[ξ] = V[ξ] @ U[ξ]            alpha² GEMMs, (T, F): the sum over channels
    y[t] = Aᵀ M[t] A + b          output tiles, m×m              kernels.winograd_output_tf

The element-wise product of the 2-D algorithm, summed over input channels, is a matrix
product per point ξ; that is where the multiplications go, alpha²·T·C·F of them against
9·m²·T·C·F for im2col's GEMM (2.25× fewer for m = 2, 4× for m = 4).

Backward is the adjoint of each linear step, in reverse (so it is exact too; read the forward
column upwards):

    dM[t]  = A dY[t] Aᵀ                     kernels.winograd_grad_tf (also db = sum of dY)
    dU[ξ]  = V[ξ]ᵀ @ dM[ξ]                  alpha² GEMMs, (C, F)
    dw     = Gᵀ dU G                        (F, C, 3, 3)
    dV[ξ]  = dM[ξ] @ U[ξ]ᵀ                  alpha² GEMMs, (T, C)
    dx     = B dV[t] Bᵀ, overlapping tiles summed       kernels.winograd_input_grad

The weight gradient is Winograd's F(3×3, m×m) with the output gradient's tiles as the
"filter" (transform A, data transform Bᵀ, output transform Gᵀ: F(m, 3) transposed), and dx is
the full correlation of dY with the 180°-rotated, transposed filters computed by the same
algorithm transposed; both reuse the forward pass's V and U and share one transform of dY.

With a ReLU and a 2×2 max pool after the convolution (the seed model's blocks) and an even m,
every tile holds whole pool windows, so the output transform also adds the bias, pools and
applies the ReLU, writing only the pooled output (kernels.winograd_relu_pool2x2_fwd), and
backward starts from the pooled gradient (kernels.winograd_relu_pool2x2_bwd).

Which layers take this path, and which m, is each backend's measured setting (the
``WINOGRAD_*`` values in gpucnn.backend.cpu), chosen by gpucnn.functional.conv.algorithm.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

from gpucnn.backend import backend_of
from gpucnn.backend.winograd import matrices
from gpucnn.grad_mode import is_grad_enabled


class WinogradCache(NamedTuple):
    """What :func:`backward` needs after a forward without the pool."""

    v: Any  # (alpha², T, C) input tiles Bᵀ d B (None under no_grad: freed after the GEMMs)
    u: Any  # (alpha², C, F) filter transforms G w Gᵀ (likewise)
    x_shape: tuple  # (N, C, H, W)
    out_shape: tuple  # (N, F, OH, OW): the convolution's output, before any pool
    has_bias: bool
    pad: int
    m: int  # the output tile: F(m×m, 3×3)

    algorithm = "winograd"


class WinogradReluPoolCache(NamedTuple):
    """What :func:`backward` needs after a forward with ``pool``: the convolution's cache and
    the pooled epilogue's output and argmax."""

    conv: WinogradCache
    arg: Any  # (N, F, PH, PW): the position of each 2×2 window's maximum
    y: Any  # (N, F, PH, PW): relu(maxpool2x2(conv)); its zeros are ReLU's mask

    algorithm = "winograd"


@functools.lru_cache(maxsize=8)
def _kron_g(m: int, xp: Any) -> Any:
    """G ⊗ G, (alpha², 9), float64, made once per tile size and array module: row (i, j),
    column (k, l) is G[i, k] G[j, l], so that vec(G w Gᵀ) = (G ⊗ G) vec(w) for a 3×3 filter
    w (row-major vec)."""
    g = matrices(m)[1]
    return xp.asarray(np.kron(g, g))


def filter_transform(w: Any, m: int) -> Any:
    """U = G w Gᵀ for every (filter, channel), as the GEMMs want it: one product with G ⊗ G.

    Shape: w (F, C, 3, 3) -> (alpha², C, F). Computed in float64 (the 1/6 and 1/24 of
    F(4×4, 3×3) are not exact in binary) and returned in w's dtype.
    """
    be = backend_of(w)
    xp = be.xp
    f, c = w.shape[:2]
    u = be.kernels.matmul(_kron_g(m, xp), w.reshape(f * c, 9).T.astype(xp.float64))  # (α², F*C)
    u = u.reshape(-1, f, c).transpose(0, 2, 1)  # (alpha², C, F)
    return xp.ascontiguousarray(u, dtype=w.dtype)


def filter_grad(du: Any, m: int, w_shape: tuple) -> Any:
    """dw = Gᵀ dU G, the adjoint of filter_transform: (G ⊗ G)ᵀ vec(dU).

    Shape: (alpha², C, F) -> (F, C, 3, 3).
    """
    be = backend_of(du)
    xp = be.xp
    f, c = w_shape[:2]
    d = be.kernels.matmul(_kron_g(m, xp).T, du.reshape(-1, c * f).astype(xp.float64))  # (9, C*F)
    d = d.reshape(3, 3, c, f).transpose(3, 2, 0, 1)  # (F, C, 3, 3)
    return xp.ascontiguousarray(d, dtype=du.dtype)


def forward(
    x: Any, w: Any, b: Any, pad: int, m: int, pool: bool = False
) -> tuple[Any, WinogradCache | WinogradReluPoolCache]:
    """y = conv2d(x, w, b) (3×3, stride 1, padding ``pad``) by F(m×m, 3×3); with ``pool``,
    relu(maxpool2x2(y)) and its argmax instead.

    Shape: x (N, C, H, W), w (F, C, 3, 3), b (F,) or None -> y (N, F, OH, OW),
    OH = H + 2·pad − 2; with pool, (N, F, OH // 2, OW // 2). Arguments are checked by the
    caller (functional.conv2d_forward, functional.conv2d_relu_maxpool_forward).
    """
    be = backend_of(x, w, b)
    n, _, h, wd = x.shape
    f = w.shape[0]
    out_shape = (n, f, h + 2 * pad - 2, wd + 2 * pad - 2)
    u = filter_transform(w, m)  # (alpha², C, F)
    v = be.kernels.winograd_input_tf(x, m, pad)  # (alpha², T, C)
    mt = be.kernels.matmul(v, u)  # (alpha², T, F): the alpha² GEMMs
    if not is_grad_enabled():
        v = u = None  # nothing will read the tiles again: free them now
    cache = WinogradCache(v, u, x.shape, out_shape, b is not None, pad, m)
    if pool:
        y, arg = be.kernels.winograd_relu_pool2x2_fwd(mt, b, out_shape, m)
        return y, WinogradReluPoolCache(cache, arg, y)
    return be.kernels.winograd_output_tf(mt, b, out_shape, m), cache


def backward(
    dy: Any,
    cache: WinogradCache | WinogradReluPoolCache,
    need_dx: bool = True,
    need_params: bool = True,
) -> tuple[Any, Any, Any]:
    """Gradients of ``forward``: dy (its output's shape) -> dx, dw, db (input order; None
    where not needed, as conv2d_backward)."""
    be = backend_of(dy)
    if isinstance(cache, WinogradReluPoolCache):
        c = cache.conv
        dm, db = be.kernels.winograd_relu_pool2x2_bwd(dy, cache.arg, cache.y, c.out_shape[2:], c.m)
    else:
        c = cache
        dm, db = be.kernels.winograd_grad_tf(dy, c.m)  # (alpha², T, F)
    dw = None
    if need_params:
        du = be.kernels.matmul(c.v.transpose(0, 2, 1), dm)  # (alpha², C, F)
        dw = filter_grad(du, c.m, (c.out_shape[1], c.x_shape[1]))
    db = db if c.has_bias and need_params else None
    dx = None
    if need_dx:
        dv = be.kernels.matmul(dm, c.u.transpose(0, 2, 1))  # (alpha², T, C)
        dx = be.kernels.winograd_input_grad(dv, c.x_shape, c.m, c.pad)
    return dx, dw, db
