"""im2col / col2im on the GPU: Numba CUDA kernels and their launchers (the CPU twins are in
gpucnn.backend.cpu.window).

Each kernel holds index math only, in a grid-stride loop. im2col runs one thread per
(channel, column): it splits its flat index once and writes the k*k values of its window
down the column's rows; a warp holds adjacent columns, so every read of x and every write of
cols is coalesced (adjacent ow). The first version ran one thread per element of cols and
split the index into (row, col) and then (c, i, j, n, oh, ow) for each: its PTX (sm_90) has
nine 64-bit divisions and remainders in the loop for each value it stores, against three
here for the k*k values of a thread, and each 64-bit division is a long instruction
sequence on the GPU. The H200 measured 600 us for the seed step's two im2cols at batch 512,
where the 130 MB they move take ~30 us at the card's bandwidth, which points at that integer
arithmetic rather than the memory. col2im gathers (each input pixel sums the windows that saw it)
instead of scattering with atomics, so results are deterministic; its windows' offsets skip
the remainders at stride 1 and stop at the first tap row or column above the image. (Timed
on hardware by gpu_check's kernel part; not yet, at the time of writing.)

No float literal appears in a kernel: zero and scale factors arrive as arguments of the
array's dtype, so float32 stays float32.

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
    ncols = cols.shape[1]
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, c * ncols, step):  # one thread per (channel, column): k*k values
        ci = e // ncols
        col = e - ci * ncols
        ni = col // (oh * ow)
        rest = col - ni * (oh * ow)
        oy = rest // ow
        y0 = oy * stride - pad
        x0 = (rest - oy * ow) * stride - pad
        row = ci * k * k
        for i in range(k):
            hy = y0 + i
            inside = 0 <= hy < h
            for j in range(k):
                wx = x0 + j
                if inside and 0 <= wx < w:
                    cols[row, col] = x[ni, ci, hy, wx]
                else:
                    cols[row, col] = pad_value
                row += 1


@cuda.jit(cache=True)
def col2im_bwd_kernel(cols, k, stride, pad, zero, out):  # pragma: no cover - device code
    n, c, h, w = out.shape
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, n * c * h * w, step):
        plane = e // (h * w)  # ni * c + ci
        r = e - plane * (h * w)
        hy = r // w
        wx = r - hy * w
        ni = plane // c
        ci = plane - ni * c
        acc = zero
        for i in range(k):
            t = hy + pad - i  # oy * stride for the window that sees (hy, wx) at tap row i
            if t < 0:
                break  # t only falls as i grows
            if stride != 1 and t % stride != 0:
                continue
            oy = t if stride == 1 else t // stride
            if oy >= oh:
                continue
            for j in range(k):
                u = wx + pad - j
                if u < 0:
                    break
                if stride != 1 and u % stride != 0:
                    continue
                ox = u if stride == 1 else u // stride
                if ox < ow:
                    acc += cols[(ci * k + i) * k + j, (ni * oh + oy) * ow + ox]
        out[ni, ci, hy, wx] = acc


def im2col(x: Any, k: int, stride: int, pad: int, pad_value: float = 0.0) -> Any:
    """Shape: (N, C, H, W) -> (C*k*k, N*OH*OW); rows (c, i, j), columns (n, oh, ow)."""
    check("im2col", x, 4)
    n, c, h, w = x.shape
    oh, ow = out_size(h, k, stride, pad), out_size(w, k, stride, pad)
    cols = array_module(x).empty((c * k * k, n * oh * ow), dtype=x.dtype)
    im2col_fwd_kernel[config(c * cols.shape[1])](x, k, stride, pad, x.dtype.type(pad_value), cols)
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
