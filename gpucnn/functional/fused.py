"""Convolution, ReLU and 2×2 max pooling as one op: the conv block of the seed model.

Forward, for input x (N, C, H, W), filters w (F, C, k, k), bias b (F,), conv stride S and
padding P, with OH, OW the convolution's output size (functional/conv.py):

    z[n, f, oh, ow]  = b[f] + sum_{c, i, j} w[f, c, i, j] * xpad[n, c, oh*S + i, ow*S + j]
    y[n, f, py, px]  = relu(max_{i, j in {0, 1}} z[n, f, 2py + i, 2px + j])
    PH = OH // 2, PW = OW // 2 (an odd last row or column of z is in no window)

which is Conv2d -> ReLU -> MaxPool2d(2) (or Conv2d -> MaxPool2d(2) -> ReLU: relu and max
commute). As matrices, with cols = im2col(x) (C*k*k, N*OH*OW) and Wm = w.reshape(F, C*k*k):

    Yt      = Wm @ cols                                   (F, N*OH*OW) = (F, N, OH, OW)
    y, arg  = conv_relu_pool2x2_fwd(Yt, b)                one pass, (N, F, PH, PW) each

Backward, with g = dy where y > 0 else 0 (ReLU's mask; the gradient at 0 is 0):

    dY2, db = conv_relu_pool2x2_bwd(dy, arg, y)           dY2 (F, N*OH*OW): g at each window's
                                                          argmax, 0 elsewhere; db[f] = sum g
    dW = dY2 @ cols.T                                     (F, C*k*k)
    dx = col2im(Wm.T @ dY2)                               (N, C, H, W)

Neither pass makes a full-size (N, F, OH, OW) tensor: the bias, the transpose to (N, F, ...),
the pool and the ReLU are the epilogue of the forward GEMM, and their gradients the prologue of
the backward GEMMs. y, arg and dY2 are bit for bit those of the layers run one by one; db is
their sum in another order. The products are the backend's ``kernels.matmul``, as conv's.

Where the convolution runs by Winograd (conv2d_forward's ``algorithm``), each m×m output tile
holds whole 2×2 windows, so the same epilogue follows the output transform instead of the
GEMM: functional/winograd.py with ``pool=True``.
"""

from __future__ import annotations

from typing import Any

from gpucnn.backend import backend_of
from gpucnn.functional import winograd
from gpucnn.functional.checks import (
    check_cache,
    check_channels,
    check_float,
    check_positive,
    check_rank,
    window_out_size,
)
from gpucnn.functional.conv import conv_algorithm, resolve_padding, winograd_tile
from gpucnn.grad_mode import is_grad_enabled, kept


def conv2d_relu_maxpool_forward(
    x: Any,
    w: Any,
    b: Any = None,
    stride: int = 1,
    padding: int | str = 0,
    algorithm: str = "auto",
) -> tuple[Any, tuple]:
    """relu(maxpool2x2(conv2d(x, w, b))) in one GEMM and one pass over its output.

    Args:
        x: input (N, C, H, W).
        w: filters (F, C, k, k).
        b: bias (F,) or None.
        stride: the convolution's step S >= 1 (the pool's is 2).
        padding: the convolution's P (int), "same" or "valid" (the pool's is 0).
        algorithm: the convolution's, as conv2d_forward's ("direct" is not fused: it makes
            no GEMM output for the epilogue to read). With "winograd" (and an even tile) the
            epilogue is the Winograd output transform's (functional/winograd.py).

    Returns:
        (y, cache); y is (N, F, OH // 2, OW // 2), OH = floor((H - k + 2P) / S) + 1.
    """
    layer = "Conv2d"  # the messages of the layers run one by one
    check_rank(layer, x, 4, "(N, C, H, W)")
    check_float(layer, x, like=w)
    f, c, k, _ = w.shape
    n = x.shape[0]
    check_channels(layer, x, c)
    stride = check_positive(layer, "stride", stride)
    pad = resolve_padding(layer, padding, k, stride)
    oh, ow = window_out_size(layer, x.shape, k, stride, pad)
    window_out_size("MaxPool2d", (n, f, oh, ow), 2, 2, 0)
    be = backend_of(x, w, b)
    algo = conv_algorithm(be, c, k, stride, pad, algorithm)
    if algo == "direct":
        raise ValueError("conv2d_relu_maxpool: a direct convolution is not fused")
    if algo == "winograd":  # every tile size here is even: a tile holds whole windows
        y, wcache = winograd.forward(x, w, b, pad, winograd_tile(be) or 2, pool=True)
        return y, kept(("winograd", wcache))

    cols = be.kernels.im2col(x, k, stride, pad)  # (C*k*k, N*OH*OW)
    yt = be.kernels.matmul(w.reshape(f, -1), cols)  # (F, N*OH*OW)
    if not is_grad_enabled():
        cols = None  # nothing will read the columns again: free them now
    y, arg = be.kernels.conv_relu_pool2x2_fwd(yt.reshape(f, n, oh, ow), b)  # (N, F, PH, PW)
    return y, kept(("im2col", (cols, x.shape, w, b is not None, stride, pad, (oh, ow), arg, y)))


def conv2d_relu_maxpool_backward(
    dy: Any, cache: tuple, need_dx: bool = True, need_params: bool = True
) -> tuple[Any, Any, Any]:
    """Gradients of the fused op. Shape: dy (N, F, PH, PW) -> dx, dw, db (input order).

    ``need_dx=False`` skips the dx GEMM and col2im (dx is then None); ``need_params=False``
    skips dw and db (then None, as db is when the forward pass had no bias).
    """
    algo, saved = check_cache("Conv2d", cache)
    if algo == "winograd":
        return winograd.backward(dy, saved, need_dx, need_params)
    cols, x_shape, w, has_bias, stride, pad, out_hw, arg, y = saved
    be = backend_of(dy)
    f, _, k, _ = w.shape
    dy2, db = be.kernels.conv_relu_pool2x2_bwd(dy, arg, y, out_hw)  # (F, N*OH*OW), (F,)
    dw = be.kernels.matmul(dy2, cols.T).reshape(w.shape) if need_params else None
    db = db if has_bias and need_params else None
    dx = None
    if need_dx:
        # (C*k*k, N*OH*OW), a temporary: col2im may reuse it
        dcols = be.kernels.matmul(w.reshape(f, -1).T, dy2)
        dx = be.kernels.col2im(dcols, x_shape, k, stride, pad, overwrite_cols=True)
    return dx, dw, db
