"""Pooling windows on the CPU, as reductions over im2col columns of a (N*C, 1, H, W) view."""

from __future__ import annotations

import numpy as np

from gpucnn.backend.cpu.window import _out, col2im, im2col


def maxpool2d_fwd(x: np.ndarray, k: int, stride: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Max over each window; also returns which window element won (for the backward pass).

    Shape: (N, C, H, W) -> y (N, C, OH, OW), argmax (N, C, OH, OW) int in [0, k*k).
    Padding counts as -inf, so it never wins.
    """
    n, c, h, w = x.shape
    oh, ow = _out(h, k, stride, pad), _out(w, k, stride, pad)
    cols = im2col(x.reshape(n * c, 1, h, w), k, stride, pad, pad_value=-np.inf)
    arg = cols.argmax(axis=0)
    y = np.take_along_axis(cols, arg[None], axis=0)[0]
    return y.reshape(n, c, oh, ow), arg.reshape(n, c, oh, ow)


def maxpool2d_bwd(
    dy: np.ndarray, arg: np.ndarray, x_shape: tuple, k: int, stride: int, pad: int
) -> np.ndarray:
    """Route each output gradient to the input element that won its window.

    Shape: dy (N, C, OH, OW) -> dx (N, C, H, W).
    """
    n, c, h, w = x_shape
    m = dy.size
    dcols = np.zeros((k * k, m), dtype=dy.dtype)
    dcols[arg.reshape(-1), np.arange(m)] = dy.reshape(-1)
    return col2im(dcols, (n * c, 1, h, w), k, stride, pad).reshape(n, c, h, w)


def avgpool2d_fwd(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """Mean over each window, padding counted as zeros (PyTorch's count_include_pad=True).

    Shape: (N, C, H, W) -> (N, C, OH, OW).
    """
    n, c, h, w = x.shape
    oh, ow = _out(h, k, stride, pad), _out(w, k, stride, pad)
    cols = im2col(x.reshape(n * c, 1, h, w), k, stride, pad)
    return (cols.sum(axis=0) * x.dtype.type(1.0 / (k * k))).reshape(n, c, oh, ow)


def avgpool2d_bwd(dy: np.ndarray, x_shape: tuple, k: int, stride: int, pad: int) -> np.ndarray:
    """Spread each output gradient evenly over its window. Shape: (N, C, OH, OW) -> (N, C, H, W)."""
    n, c, h, w = x_shape
    g = dy.reshape(1, -1) * dy.dtype.type(1.0 / (k * k))
    dcols = np.broadcast_to(g, (k * k, g.shape[1]))
    return col2im(dcols, (n * c, 1, h, w), k, stride, pad).reshape(n, c, h, w)
