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

from typing import Any, NamedTuple

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
from gpucnn.functional.conv import (
    Im2colCache,
    conv_algorithm,
    conv_input_grad,
    resolve_padding,
    winograd_tile,
)
from gpucnn.grad_mode import is_grad_enabled, kept


class ConvReluPoolCache(NamedTuple):
    """What conv2d_relu_maxpool_backward needs after an im2col forward: the convolution's
    cache and the epilogue's output and argmax."""

    conv: Im2colCache
    out_hw: tuple  # (OH, OW): the convolution's output size, before the pool
    arg: Any  # (N, F, PH, PW): the position of each 2×2 window's maximum
    y: Any  # (N, F, PH, PW): the output; its zeros are ReLU's mask

    algorithm = "im2col"


# a Winograd forward keeps functional.winograd's pooled cache
FusedCache = ConvReluPoolCache | winograd.WinogradReluPoolCache


def conv2d_relu_maxpool_forward(
    x: Any,
    w: Any,
    b: Any = None,
    stride: int = 1,
    padding: int | str = 0,
    algorithm: str = "auto",
) -> tuple[Any, FusedCache | None]:
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
        return y, kept(wcache)

    cols = be.kernels.im2col(x, k, stride, pad)  # (C*k*k, N*OH*OW)
    yt = be.kernels.matmul(w.reshape(f, -1), cols)  # (F, N*OH*OW)
    if not is_grad_enabled():
        cols = None  # nothing will read the columns again: free them now
    y, arg = be.kernels.conv_relu_pool2x2_fwd(yt.reshape(f, n, oh, ow), b)  # (N, F, PH, PW)
    conv = Im2colCache(cols, x.shape, w, b is not None, stride, pad)
    return y, kept(ConvReluPoolCache(conv, (oh, ow), arg, y))


def conv2d_relu_maxpool_backward(
    dy: Any, cache: FusedCache, need_dx: bool = True, need_params: bool = True
) -> tuple[Any, Any, Any]:
    """Gradients of the fused op. Shape: dy (N, F, PH, PW) -> dx, dw, db (input order).

    ``need_dx=False`` skips the dx GEMM and col2im (dx is then None); ``need_params=False``
    skips dw and db (then None, as db is when the forward pass had no bias).
    """
    cache = check_cache("Conv2d", cache, ConvReluPoolCache, winograd.WinogradReluPoolCache)
    if isinstance(cache, winograd.WinogradReluPoolCache):
        return winograd.backward(dy, cache, need_dx, need_params)
    c = cache.conv
    be = backend_of(dy)
    # (F, N*OH*OW), (F,)
    dy2, db = be.kernels.conv_relu_pool2x2_bwd(dy, cache.arg, cache.y, cache.out_hw)
    dw = be.kernels.matmul(dy2, c.cols.T).reshape(c.w.shape) if need_params else None
    db = db if c.has_bias and need_params else None
    dx = conv_input_grad(be, c.w, dy2, c.x_shape, c.stride, c.pad) if need_dx else None
    return dx, dw, db
