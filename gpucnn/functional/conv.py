"""2-D convolution (cross-correlation, as every deep learning library computes it).

Forward, for input x (N, C, H, W), filters w (F, C, k, k) and bias b (F,):

    y[n, f, oh, ow] = b[f] + sum_{c, i, j} w[f, c, i, j] * xpad[n, c, oh*S + i, ow*S + j]

with OH = floor((H - k + 2P) / S) + 1 (likewise OW). One set of F filters slides over every
position: that is weight sharing, and it is why a conv layer has F*C*k*k + F parameters however
large the image is.

As matrices, with cols = im2col(x) of shape (C*k*k, N*OH*OW) and Wm = w.reshape(F, C*k*k):

    Y  = Wm @ cols                       (F, N*OH*OW)
    dW = dY @ cols.T                     (F, C*k*k)
    db = dY summed over its columns      (F,)
    dx = col2im(Wm.T @ dY)               (N, C, H, W)

The products are the backend's ``kernels.matmul`` (NumPy's or CuPy's ``@``; the GEMM kernels
while a CUDA step is captured into a graph, where cuBLAS is refused).

A layer with few taps (C*k*k at most the backend's ``DIRECT_CONV_MAX_TAPS``; a first layer
on one channel with 3×3 filters has 9) can skip the columns: ``conv2d_direct_fwd`` computes Y
from x directly and ``conv2d_direct_bwd`` dW and db from x and dY (the sums above, as loops);
dx, where wanted, is still col2im(Wm.T @ dY), which needs no columns. Whether it pays is the
backend's measured setting (see gpucnn.backend.cpu and .cuda).
"""

from __future__ import annotations

from typing import Any

from gpucnn.backend import backend_of
from gpucnn.functional.checks import (
    check_channels,
    check_float,
    check_positive,
    check_rank,
    window_out_size,
)


def resolve_padding(layer: str, padding: int | str, k: int, stride: int) -> int:
    """Turn ``padding`` (an int, "valid" or "same") into the symmetric padding P.

    "same" keeps H and W (P = (k - 1) / 2), so it needs stride 1 and an odd kernel.
    """
    if padding == "valid":
        return 0
    if padding == "same":
        if stride != 1:
            raise ValueError(f"{layer}: padding='same' needs stride 1, got stride {stride}")
        if k % 2 == 0:
            raise ValueError(
                f"{layer}: padding='same' needs an odd kernel size for symmetric padding, "
                f"got {k}; pass an explicit integer padding instead"
            )
        return (k - 1) // 2
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(
            f"{layer}: padding must be an integer >= 0, 'same' or 'valid', got {padding!r}"
        )
    return padding


def goes_direct(be: Any, channels: int, k: int) -> bool:
    """Whether a convolution with ``channels`` inputs and k×k filters skips the columns on
    backend ``be``: C*k*k at most its kernels' ``DIRECT_CONV_MAX_TAPS`` (0: never)."""
    return channels * k * k <= getattr(be.kernels, "DIRECT_CONV_MAX_TAPS", 0)


def conv2d_forward(
    x: Any, w: Any, b: Any = None, stride: int = 1, padding: int | str = 0
) -> tuple[Any, tuple]:
    """Convolve ``x`` with ``w`` and add ``b``.

    Args:
        x: input (N, C, H, W).
        w: filters (F, C, k, k).
        b: bias (F,) or None.
        stride: step S >= 1 of the window.
        padding: P (int), "same" or "valid".

    Returns:
        (y, cache); y is (N, F, OH, OW), OH = floor((H - k + 2P) / S) + 1.
    """
    layer = "Conv2d"
    check_rank(layer, x, 4, "(N, C, H, W)")
    check_float(layer, x, like=w)
    f, c, k, _ = w.shape
    check_channels(layer, x, c)
    stride = check_positive(layer, "stride", stride)
    pad = resolve_padding(layer, padding, k, stride)
    oh, ow = window_out_size(layer, x.shape, k, stride, pad)
    be = backend_of(x, w, b)
    n = x.shape[0]
    if goes_direct(be, c, k):
        y = be.kernels.conv2d_direct_fwd(x, w, b, stride, pad)
        return y, (x, True, x.shape, w, b is not None, stride, pad)

    cols = be.kernels.im2col(x, k, stride, pad)  # (C*k*k, N*OH*OW)
    yt = be.kernels.matmul(w.reshape(f, -1), cols)  # (F, N*OH*OW)
    yt = yt.reshape(f, n, oh, ow).transpose(1, 0, 2, 3)
    y = be.xp.empty((n, f, oh, ow), dtype=yt.dtype)
    if b is not None:  # the bias rides along the one pass that transposes to (N, F, OH, OW)
        be.xp.add(yt, b[None, :, None, None], out=y)
    else:
        y[...] = yt
    return y, (cols, False, x.shape, w, b is not None, stride, pad)


def conv2d_backward(
    dy: Any, cache: tuple, need_dx: bool = True, need_params: bool = True
) -> tuple[Any, Any, Any]:
    """Gradients of a convolution. Shape: dy (N, F, OH, OW) -> dx, dw, db (input order).

    ``need_dx=False`` skips col2im (an input that needs no gradient); dx is then None.
    ``need_params=False`` skips dw and db (frozen filters); they are then None, as is db
    when the forward pass had no bias.
    """
    saved, direct, x_shape, w, has_bias, stride, pad = cache  # saved: cols, or x if direct
    be = backend_of(dy)
    f, _, k, _ = w.shape
    # (F, N*OH*OW), a copy: made only where a GEMM reads it
    dy2 = dy.transpose(1, 0, 2, 3).reshape(f, -1) if need_dx or not direct else None
    dw = db = None
    if need_params and direct:
        dw, db = be.kernels.conv2d_direct_bwd(dy, saved, k, stride, pad)
        db = db if has_bias else None
    elif need_params:
        dw = be.kernels.matmul(dy2, saved.T).reshape(w.shape)
        db = dy2.sum(axis=1) if has_bias else None
    dx = None
    if need_dx:
        # (C*k*k, N*OH*OW), a temporary: col2im may reuse it
        dcols = be.kernels.matmul(w.reshape(f, -1).T, dy2)
        dx = be.kernels.col2im(dcols, x_shape, k, stride, pad, overwrite_cols=True)
    return dx, dw, db
