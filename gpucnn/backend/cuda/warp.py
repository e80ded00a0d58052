"""Affine warps for augmentation on the GPU: one thread per output pixel, bilinear, zero fill.

Every float in the kernel is of the image's dtype: pixel coordinates come from small arange
arrays of that dtype and the fractional part is a floor-modulo, so no integer ever meets a
float (which Numba, like NumPy, would promote to float64).
"""

from __future__ import annotations

from numba import cuda


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
