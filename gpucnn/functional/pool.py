"""Pooling: max and average over k×k windows, and their global forms.

Window pooling slides a k×k window with stride S (default S = k) over each channel:

    OH = floor((H - k + 2P) / S) + 1     (likewise OW)
    max: y = max over the window;  dy flows only to the element that was the max
    avg: y = mean over the window; dy is split evenly, dy / k^2, over the window

Global pooling reduces each channel's whole H×W plane to one number: (N, C, H, W) -> (N, C).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from gpucnn.backend import backend_of
from gpucnn.functional.checks import (
    check_cache,
    check_float,
    check_positive,
    check_rank,
    window_out_size,
)
from gpucnn.grad_mode import kept


class MaxPoolCache(NamedTuple):
    """What maxpool2d_backward needs."""

    arg: Any  # (N, C, OH, OW): where in its window each maximum was
    x_shape: tuple
    kernel_size: int
    stride: int
    padding: int


class AvgPoolCache(NamedTuple):
    """What avgpool2d_backward needs (no array: dy is spread evenly)."""

    x_shape: tuple
    kernel_size: int
    stride: int
    padding: int


class GlobalAvgPoolCache(NamedTuple):
    """What global_avgpool2d_backward needs."""

    x_shape: tuple


class GlobalMaxPoolCache(NamedTuple):
    """What global_maxpool2d_backward needs."""

    arg: Any  # (N, C): where in its plane each maximum was
    x_shape: tuple


def _check_window(layer: str, x: Any, k: int, stride: int | None, pad: int) -> tuple[int, int]:
    check_rank(layer, x, 4, "(N, C, H, W)")
    check_float(layer, x)
    k = check_positive(layer, "kernel_size", k)
    stride = k if stride is None else check_positive(layer, "stride", stride)
    if not isinstance(pad, int) or pad < 0 or 2 * pad > k:
        raise ValueError(f"{layer}: padding must be an integer in [0, kernel_size/2], got {pad!r}")
    window_out_size(layer, x.shape, k, stride, pad)
    return k, stride


def maxpool2d_forward(
    x: Any, kernel_size: int, stride: int | None = None, padding: int = 0
) -> tuple[Any, MaxPoolCache | None]:
    """Shape: (N, C, H, W) -> (N, C, OH, OW). Padding never wins the max."""
    k, s = _check_window("MaxPool2d", x, kernel_size, stride, padding)
    y, arg = backend_of(x).kernels.maxpool2d_fwd(x, k, s, padding)
    return y, kept(MaxPoolCache(arg, x.shape, k, s, padding))


def maxpool2d_backward(dy: Any, cache: MaxPoolCache) -> Any:
    """Shape: (N, C, OH, OW) -> (N, C, H, W)."""
    c = check_cache("MaxPool2d", cache, MaxPoolCache)
    return backend_of(dy).kernels.maxpool2d_bwd(
        dy, c.arg, c.x_shape, c.kernel_size, c.stride, c.padding
    )


def avgpool2d_forward(
    x: Any, kernel_size: int, stride: int | None = None, padding: int = 0
) -> tuple[Any, AvgPoolCache | None]:
    """Shape: (N, C, H, W) -> (N, C, OH, OW). Padded zeros count in the mean (as PyTorch)."""
    k, s = _check_window("AvgPool2d", x, kernel_size, stride, padding)
    y = backend_of(x).kernels.avgpool2d_fwd(x, k, s, padding)
    return y, kept(AvgPoolCache(x.shape, k, s, padding))


def avgpool2d_backward(dy: Any, cache: AvgPoolCache) -> Any:
    """Shape: (N, C, OH, OW) -> (N, C, H, W)."""
    c = check_cache("AvgPool2d", cache, AvgPoolCache)
    return backend_of(dy).kernels.avgpool2d_bwd(dy, c.x_shape, c.kernel_size, c.stride, c.padding)


def global_avgpool2d_forward(x: Any) -> tuple[Any, GlobalAvgPoolCache | None]:
    """y[n, c] = mean over h, w of x[n, c, h, w]. Shape: (N, C, H, W) -> (N, C)."""
    check_rank("GlobalAvgPool2d", x, 4, "(N, C, H, W)")
    check_float("GlobalAvgPool2d", x)
    return backend_of(x).kernels.global_avgpool2d_fwd(x), kept(GlobalAvgPoolCache(x.shape))


def global_avgpool2d_backward(dy: Any, cache: GlobalAvgPoolCache) -> Any:
    """Shape: (N, C) -> (N, C, H, W); every position receives dy / (H*W)."""
    c = check_cache("GlobalAvgPool2d", cache, GlobalAvgPoolCache)
    return backend_of(dy).kernels.global_avgpool2d_bwd(dy, c.x_shape)


def global_maxpool2d_forward(x: Any) -> tuple[Any, GlobalMaxPoolCache | None]:
    """y[n, c] = max over h, w of x[n, c, h, w]. Shape: (N, C, H, W) -> (N, C)."""
    check_rank("GlobalMaxPool2d", x, 4, "(N, C, H, W)")
    check_float("GlobalMaxPool2d", x)
    y, arg = backend_of(x).kernels.global_maxpool2d_fwd(x)
    return y, kept(GlobalMaxPoolCache(arg, x.shape))


def global_maxpool2d_backward(dy: Any, cache: GlobalMaxPoolCache) -> Any:
    """Shape: (N, C) -> (N, C, H, W); the gradient goes to each plane's maximum."""
    c = check_cache("GlobalMaxPool2d", cache, GlobalMaxPoolCache)
    return backend_of(dy).kernels.global_maxpool2d_bwd(dy, c.arg, c.x_shape)
