"""Affine warps for augmentation on the GPU: one thread per output pixel, bilinear, zero fill.

Every float in the kernel is of the image's dtype: pixel coordinates come from small arange
arrays of that dtype and the fractional part is a floor-modulo, so no integer ever meets a
float (which Numba, like NumPy, would promote to float64).
"""

from __future__ import annotations

from typing import Any

from gpucnn.backend.cuda.launch import array_module, check, config
from gpucnn.backend.numba_cuda import cuda


@cuda.jit(cache=True)
def affine_warp_fwd_kernel(x, inv, shift, xs, ys, cx, cy, zero, one, out):  # pragma: no cover
    n, c, h, w = x.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, n * c * h * w, step):
        ni, ci = e // (c * h * w), (e // (h * w)) % c
        py, px = (e // w) % h, e % w
        dx = xs[px] - cx - shift[ni, 0]
        dy = ys[py] - cy - shift[ni, 1]
        qx = inv[ni, 0] * dx + inv[ni, 1] * dy + cx
        qy = inv[ni, 2] * dx + inv[ni, 3] * dy + cy
        fx = qx % one  # in [0, 1), also for negative qx
        fy = qy % one
        x0 = int(qx - fx)
        y0 = int(qy - fy)
        acc = zero
        for oy in range(2):
            yi = y0 + oy
            if yi < 0 or yi >= h:
                continue
            wy = fy if oy == 1 else one - fy
            for ox in range(2):
                xi = x0 + ox
                if 0 <= xi < w:
                    wx = fx if ox == 1 else one - fx
                    acc += x[ni, ci, yi, xi] * (wy * wx)
        out[ni, ci, py, px] = acc


def affine_warp(x: Any, inv: Any, shift: Any) -> Any:
    """Shape: x (N, C, H, W), inv (N, 4), shift (N, 2) float32 -> (N, C, H, W); see the CPU twin."""
    check("affine_warp", x, 4)
    if tuple(inv.shape) != (x.shape[0], 4) or tuple(shift.shape) != (x.shape[0], 2):
        raise ValueError(
            f"affine_warp: expected inv ({x.shape[0]}, 4) and shift ({x.shape[0]}, 2), "
            f"got {tuple(inv.shape)} and {tuple(shift.shape)}"
        )
    xp = array_module(x)
    n, c, h, w = x.shape
    dt = x.dtype.type
    out = xp.empty(x.shape, dtype=x.dtype)
    affine_warp_fwd_kernel[config(out.size)](
        x,
        inv.astype(x.dtype),
        shift.astype(x.dtype),
        xp.arange(w, dtype=x.dtype),
        xp.arange(h, dtype=x.dtype),
        dt((w - 1) / 2),
        dt((h - 1) / 2),
        dt(0),
        dt(1),
        out,
    )
    return out
