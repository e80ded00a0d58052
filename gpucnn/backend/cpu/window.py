"""im2col / col2im: unfold sliding windows into columns and fold them back.

The Python loops run over the k*k kernel offsets only; each iteration moves a whole strided
(N, C, OH, OW) slab, so no loop ever visits pixels, channels or batch items one by one.
"""

from __future__ import annotations

import numpy as np


def _out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def im2col(x: np.ndarray, k: int, stride: int, pad: int, pad_value: float = 0.0) -> np.ndarray:
    """Unfold the k×k windows of ``x`` into columns.

    Shape: (N, C, H, W) -> (C*k*k, N*OH*OW), OH = floor((H + 2*pad - k) / stride) + 1.
    """
    n, c, h, w = x.shape
    oh, ow = _out(h, k, stride, pad), _out(w, k, stride, pad)
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=pad_value)
    cols = np.empty((c, k, k, n, oh, ow), dtype=x.dtype)
    hi, wi = stride * (oh - 1) + 1, stride * (ow - 1) + 1
    for i in range(k):
        for j in range(k):
            # (N, C, OH, OW) slab of every window's (i, j) element, stored channel-major
            cols[:, i, j] = x[:, :, i : i + hi : stride, j : j + wi : stride].transpose(1, 0, 2, 3)
    return cols.reshape(c * k * k, n * oh * ow)


def col2im(
    cols: np.ndarray, x_shape: tuple[int, int, int, int], k: int, stride: int, pad: int
) -> np.ndarray:
    """Fold columns back into an image, summing where windows overlap (the adjoint of im2col).

    Shape: (C*k*k, N*OH*OW) -> (N, C, H, W).
    """
    n, c, h, w = x_shape
    oh, ow = _out(h, k, stride, pad), _out(w, k, stride, pad)
    out = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
    cols = cols.reshape(c, k, k, n, oh, ow)
    hi, wi = stride * (oh - 1) + 1, stride * (ow - 1) + 1
    for i in range(k):
        for j in range(k):
            out[:, :, i : i + hi : stride, j : j + wi : stride] += cols[:, i, j].transpose(
                1, 0, 2, 3
            )
    if pad:
        out = np.ascontiguousarray(out[:, :, pad : pad + h, pad : pad + w])
    return out
