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

One formula, three algorithms (``algorithm``; "auto" asks :func:`conv_algorithm`, which reads
each backend's measured settings, see gpucnn.backend.cpu and .cuda):

- "im2col": the matrices above; any shape.
- "direct": a layer with few taps (C*k*k at most the backend's ``DIRECT_CONV_MAX_TAPS``; a
  first layer on one channel with 3×3 filters has 9) skips the columns:
  ``conv2d_direct_fwd`` computes Y from x directly and ``conv2d_direct_bwd`` dW and db from x
  and dY (the sums above, as loops); dx, where wanted, is still col2im(Wm.T @ dY), which needs
  no columns.
- "winograd": 3×3 filters at stride 1, by Winograd's F(m×m, 3×3) (functional/winograd.py):
  2.25× (m = 2) or 4× (m = 4) fewer multiplications, exact up to rounding. On where the
  backend says ``WINOGRAD_TILE`` (m, 0: never) and the layer has at least
  ``WINOGRAD_MIN_CHANNELS`` input channels (fewer make its GEMMs too thin to pay).
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
from gpucnn.grad_mode import is_grad_enabled, kept


class Im2colCache(NamedTuple):
    """What conv2d_backward needs after an im2col forward."""

    cols: Any  # (C*k*k, N*OH*OW) im2col(x): dW = dY @ cols.T
    x_shape: tuple  # (N, C, H, W), for col2im
    w: Any  # (F, C, k, k): dx = col2im(Wm.T @ dY)
    has_bias: bool
    stride: int
    pad: int

    algorithm = "im2col"


class DirectCache(NamedTuple):
    """What conv2d_backward needs after a direct forward (no columns: x itself)."""

    x: Any  # (N, C, H, W): dW and db by the direct loops over x and dY
    w: Any  # (F, C, k, k)
    has_bias: bool
    stride: int
    pad: int

    algorithm = "direct"

    @property
    def x_shape(self) -> tuple:
        return self.x.shape


# a Winograd forward keeps functional.winograd's own cache (its ``algorithm`` is "winograd")
ConvCache = Im2colCache | DirectCache | winograd.WinogradCache


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


ALGORITHMS = ("auto", "im2col", "direct", "winograd")


def goes_direct(be: Any, channels: int, k: int) -> bool:
    """Whether a convolution with ``channels`` inputs and k×k filters skips the columns on
    backend ``be``: C*k*k at most its kernels' ``DIRECT_CONV_MAX_TAPS`` (0: never)."""
    return channels * k * k <= getattr(be.kernels, "DIRECT_CONV_MAX_TAPS", 0)


def winograd_tile(be: Any) -> int:
    """The output tile m of backend ``be``'s Winograd F(m×m, 3×3), 0 when it has none on."""
    return int(getattr(be.kernels, "WINOGRAD_TILE", 0))


def conv_algorithm(
    be: Any, channels: int, k: int, stride: int, pad: int, algorithm: str = "auto"
) -> str:
    """The algorithm a convolution of ``channels`` inputs, k×k filters, ``stride`` and
    padding ``pad`` runs on backend ``be``: "im2col", "direct" or "winograd".

    "auto" takes the backend's measured settings: direct for few taps, Winograd for 3×3
    stride-1 layers with padding up to 2 and at least WINOGRAD_MIN_CHANNELS inputs, else
    im2col. An explicit choice is honoured where its rule allows it.

    Raises:
        ValueError: an unknown algorithm, or "winograd" for a layer it cannot compute.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"Conv2d: algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, "
            f"got {algorithm!r}"
        )
    if algorithm == "winograd" and (k != 3 or stride != 1):
        raise ValueError(
            f"Conv2d: algorithm='winograd' computes 3x3 filters at stride 1 (F(mxm, 3x3)); "
            f"this layer has kernel {k}x{k}, stride {stride}"
        )
    if algorithm != "auto":
        return algorithm
    if goes_direct(be, channels, k):
        return "direct"
    if (
        k == 3
        and stride == 1
        and pad <= 2
        and winograd_tile(be)
        and channels >= getattr(be.kernels, "WINOGRAD_MIN_CHANNELS", 1)
    ):
        return "winograd"
    return "im2col"


def describe(algorithm: str, be: Any) -> str:
    """How ``algorithm`` reads in a model's repr and summary, e.g. "winograd F(2x2,3x3)"."""
    if algorithm == "winograd":
        m = winograd_tile(be) or 2
        return f"winograd F({m}x{m},3x3)"
    return {"im2col": "im2col+GEMM", "direct": "direct"}[algorithm]


def conv2d_forward(
    x: Any,
    w: Any,
    b: Any = None,
    stride: int = 1,
    padding: int | str = 0,
    algorithm: str = "auto",
) -> tuple[Any, ConvCache | None]:
    """Convolve ``x`` with ``w`` and add ``b``.

    Args:
        x: input (N, C, H, W).
        w: filters (F, C, k, k).
        b: bias (F,) or None.
        stride: step S >= 1 of the window.
        padding: P (int), "same" or "valid".
        algorithm: "auto" (the backend's measured choice), "im2col", "direct" or "winograd"
            (3×3, stride 1); they compute the same y up to rounding.

    Returns:
        (y, cache); y is (N, F, OH, OW), OH = floor((H - k + 2P) / S) + 1. The cache's type
        is the algorithm's (Im2colCache, DirectCache, winograd.WinogradCache) and its
        ``algorithm`` names it; None under gpucnn.no_grad().
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
    algo = conv_algorithm(be, c, k, stride, pad, algorithm)
    if algo == "direct":
        y = be.kernels.conv2d_direct_fwd(x, w, b, stride, pad)
        return y, kept(DirectCache(x, w, b is not None, stride, pad))
    if algo == "winograd":
        y, wcache = winograd.forward(x, w, b, pad, winograd_tile(be) or 2)
        return y, kept(wcache)

    cols = be.kernels.im2col(x, k, stride, pad)  # (C*k*k, N*OH*OW)
    yt = be.kernels.matmul(w.reshape(f, -1), cols)  # (F, N*OH*OW)
    if not is_grad_enabled():
        cols = None  # nothing will read the columns again: free them now
    yt = yt.reshape(f, n, oh, ow).transpose(1, 0, 2, 3)
    y = be.xp.empty((n, f, oh, ow), dtype=yt.dtype)
    if b is not None:  # the bias rides along the one pass that transposes to (N, F, OH, OW)
        be.xp.add(yt, b[None, :, None, None], out=y)
    else:
        y[...] = yt
    return y, kept(Im2colCache(cols, x.shape, w, b is not None, stride, pad))


def conv2d_backward(
    dy: Any, cache: ConvCache, need_dx: bool = True, need_params: bool = True
) -> tuple[Any, Any, Any]:
    """Gradients of a convolution. Shape: dy (N, F, OH, OW) -> dx, dw, db (input order).

    ``need_dx=False`` skips col2im (an input that needs no gradient); dx is then None.
    ``need_params=False`` skips dw and db (frozen filters); they are then None, as is db
    when the forward pass had no bias.
    """
    c = check_cache("Conv2d", cache, Im2colCache, DirectCache, winograd.WinogradCache)
    if isinstance(c, winograd.WinogradCache):
        return winograd.backward(dy, c, need_dx, need_params)
    direct = isinstance(c, DirectCache)
    be = backend_of(dy)
    f, _, k, _ = c.w.shape
    # (F, N*OH*OW), a copy: made only where a GEMM reads it
    dy2 = dy.transpose(1, 0, 2, 3).reshape(f, -1) if need_dx or not direct else None
    dw = db = None
    if need_params and direct:
        dw, db = be.kernels.conv2d_direct_bwd(dy, c.x, k, c.stride, c.pad)
        db = db if c.has_bias else None
    elif need_params:
        dw = be.kernels.matmul(dy2, c.cols.T).reshape(c.w.shape)
        db = dy2.sum(axis=1) if c.has_bias else None
    dx = None
    if need_dx:
        dx = conv_input_grad(be, c.w, dy2, c.x_shape, c.stride, c.pad)
    return dx, dw, db


def conv_input_grad(be: Any, w: Any, dy2: Any, x_shape: tuple, stride: int, pad: int) -> Any:
    """dx = col2im(Wm.T @ dY2): dY2 (F, N*OH*OW) -> dx (N, C, H, W) (conv and fused conv)."""
    f, _, k, _ = w.shape
    dcols = be.kernels.matmul(w.reshape(f, -1).T, dy2)  # (C*k*k, N*OH*OW), a temporary
    return be.kernels.col2im(dcols, x_shape, k, stride, pad, overwrite_cols=True)
