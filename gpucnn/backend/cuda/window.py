"""im2col / col2im on the GPU: Numba CUDA kernels and their launchers (the CPU twins are in
gpucnn.backend.cpu.window).

Each kernel holds index math only and runs one thread per output element in a grid-stride
loop. col2im gathers (each input pixel sums the windows that saw it) instead of scattering
with atomics, so results are deterministic. No float literal appears in a kernel:
zero and scale factors arrive as arguments of the array's dtype, so float32 stays float32.

Under NUMBA_ENABLE_CUDASIM=1 the same kernels run in Numba's simulator on NumPy arrays; that
is how CPU-only machines test the indexing.
"""

from __future__ import annotations

from typing import Any

from gpucnn.backend.cuda.launch import array_module, check, config, out_size
from gpucnn.backend.numba_cuda import cuda


@cuda.jit(cache=True)
def im2col_fwd_kernel(x, k, stride, pad, pad_value, cols):  # pragma: no cover - device code
    n, c, h, w = x.shape
    rows, ncols = cols.shape
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, rows * ncols, step):
        row, col = e // ncols, e % ncols
        ci, i, j = row // (k * k), (row // k) % k, row % k
        ni, rest = col // (oh * ow), col % (oh * ow)
        hy = (rest // ow) * stride - pad + i
        wx = (rest % ow) * stride - pad + j
        if 0 <= hy < h and 0 <= wx < w:
            cols[row, col] = x[ni, ci, hy, wx]
        else:
            cols[row, col] = pad_value


@cuda.jit(cache=True)
def col2im_bwd_kernel(cols, k, stride, pad, zero, out):  # pragma: no cover - device code
    n, c, h, w = out.shape
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, n * c * h * w, step):
        ni, ci = e // (c * h * w), (e // (h * w)) % c
        hy, wx = (e // w) % h, e % w
        acc = zero
        for i in range(k):
            t = hy + pad - i
            if t < 0 or t % stride != 0 or t // stride >= oh:
                continue
            for j in range(k):
                u = wx + pad - j
                if u < 0 or u % stride != 0 or u // stride >= ow:
                    continue
                acc += cols[(ci * k + i) * k + j, (ni * oh + t // stride) * ow + u // stride]
        out[ni, ci, hy, wx] = acc


def im2col(x: Any, k: int, stride: int, pad: int, pad_value: float = 0.0) -> Any:
    """Shape: (N, C, H, W) -> (C*k*k, N*OH*OW); rows (c, i, j), columns (n, oh, ow)."""
    check("im2col", x, 4)
    n, c, h, w = x.shape
    oh, ow = out_size(h, k, stride, pad), out_size(w, k, stride, pad)
    cols = array_module(x).empty((c * k * k, n * oh * ow), dtype=x.dtype)
    im2col_fwd_kernel[config(cols.size)](x, k, stride, pad, x.dtype.type(pad_value), cols)
    return cols


def col2im(
    cols: Any, x_shape: tuple, k: int, stride: int, pad: int, overwrite_cols: bool = False
) -> Any:
    """Shape: (C*k*k, N*OH*OW) -> (N, C, H, W), summing overlaps (the adjoint of im2col).

    The gather kernel only reads ``cols``; ``overwrite_cols`` is accepted for the CPU twin's
    sake.
    """
    check("col2im", cols, 2)
    out = array_module(cols).empty(x_shape, dtype=cols.dtype)
    col2im_bwd_kernel[config(out.size)](cols, k, stride, pad, cols.dtype.type(0), out)
    return out
