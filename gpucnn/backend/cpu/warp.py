"""Affine warps for augmentation on the CPU: inverse mapping plus bilinear sampling, NumPy."""

from __future__ import annotations

import numpy as np


def affine_warp(x: np.ndarray, inv: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """out[n, :, y, x] = bilinear sample of x[n] at q = inv[n] (p - c - shift[n]) + c, where
    p = (x, y), c is the image centre and inv[n] = (a, b, c, d) is the 2×2 matrix
    [[a, b], [c, d]]; zero outside the image.

    Shape: x (N, C, H, W), inv (N, 4), shift (N, 2) -> (N, C, H, W).
    """
    n, c, h, w = x.shape
    cy, cx = np.float32((h - 1) / 2.0), np.float32((w - 1) / 2.0)
    yy, xx = np.meshgrid(
        np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij"
    )
    dx = xx[None] - cx - shift[:, 0, None, None]  # (N, H, W)
    dy = yy[None] - cy - shift[:, 1, None, None]
    qx = inv[:, 0, None, None] * dx + inv[:, 1, None, None] * dy + cx
    qy = inv[:, 2, None, None] * dx + inv[:, 3, None, None] * dy + cy
    x0, y0 = np.floor(qx), np.floor(qy)
    fx, fy = (qx - x0).astype(x.dtype), (qy - y0).astype(x.dtype)
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    flat = x.reshape(n, c, h * w)
    out = np.zeros((n, c, h, w), dtype=x.dtype)
    for oy, ox, wgt in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        xi, yi = x0 + ox, y0 + oy
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        lin = np.where(inside, yi * w + xi, 0).reshape(n, 1, -1)
        vals = np.take_along_axis(flat, np.broadcast_to(lin, (n, c, lin.shape[2])), axis=2)
        out += vals.reshape(out.shape) * (wgt * inside)[:, None]
    return out
