"""Window kernels for the GPU: im2col / col2im and max / average pooling, Numba CUDA.

Each kernel holds index math only and runs one thread per output element in a grid-stride
loop. The backward kernels gather (each input pixel sums the windows that saw it) instead of
scattering with atomics, so results are deterministic. No float literal appears in a kernel:
zero and scale factors arrive as arguments of the array's dtype, so float32 stays float32.

Under NUMBA_ENABLE_CUDASIM=1 the same kernels run in Numba's simulator on NumPy arrays; that
is how CPU-only machines test the indexing.
"""

from __future__ import annotations

from numba import cuda


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


@cuda.jit(cache=True)
def maxpool_fwd_kernel(x, k, stride, pad, zero, y, arg):  # pragma: no cover - device code
    planes, h, w = x.shape
    _, oh, ow = y.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, planes * oh * ow, step):
        p, oy, ox = e // (oh * ow), (e // ow) % oh, e % ow
        best = zero
        won = -1
        for i in range(k):
            hy = oy * stride - pad + i
            if hy < 0 or hy >= h:
                continue
            for j in range(k):
                wx = ox * stride - pad + j
                if wx < 0 or wx >= w:
                    continue
                v = x[p, hy, wx]
                # the first element, a larger one, or a NaN (which then stays) wins
                if won < 0 or v > best or (v != v and best == best):
                    best = v
                    won = i * k + j
        y[p, oy, ox] = best
        arg[p, oy, ox] = won


@cuda.jit(cache=True)
def maxpool_bwd_kernel(dy, arg, k, stride, pad, zero, dx):  # pragma: no cover - device code
    planes, h, w = dx.shape
    _, oh, ow = dy.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, planes * h * w, step):
        p, hy, wx = e // (h * w), (e // w) % h, e % w
        acc = zero
        for i in range(k):
            t = hy + pad - i
            if t < 0 or t % stride != 0 or t // stride >= oh:
                continue
            for j in range(k):
                u = wx + pad - j
                if u < 0 or u % stride != 0 or u // stride >= ow:
                    continue
                if arg[p, t // stride, u // stride] == i * k + j:
                    acc += dy[p, t // stride, u // stride]
        dx[p, hy, wx] = acc


@cuda.jit(cache=True)
def avgpool_fwd_kernel(x, k, stride, pad, zero, scale, y):  # pragma: no cover - device code
    planes, h, w = x.shape
    _, oh, ow = y.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, planes * oh * ow, step):
        p, oy, ox = e // (oh * ow), (e // ow) % oh, e % ow
        acc = zero
        for i in range(k):
            hy = oy * stride - pad + i
            if hy < 0 or hy >= h:
                continue
            for j in range(k):
                wx = ox * stride - pad + j
                if 0 <= wx < w:
                    acc += x[p, hy, wx]
        y[p, oy, ox] = acc * scale


@cuda.jit(cache=True)
def avgpool_bwd_kernel(dy, k, stride, pad, zero, scale, dx):  # pragma: no cover - device code
    planes, h, w = dx.shape
    _, oh, ow = dy.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, planes * h * w, step):
        p, hy, wx = e // (h * w), (e // w) % h, e % w
        acc = zero
        for i in range(k):
            t = hy + pad - i
            if t < 0 or t % stride != 0 or t // stride >= oh:
                continue
            for j in range(k):
                u = wx + pad - j
                if u < 0 or u % stride != 0 or u // stride >= ow:
                    continue
                acc += dy[p, t // stride, u // stride]
        dx[p, hy, wx] = acc * scale


@cuda.jit(cache=True)
def global_pool_fwd_kernel(x, is_max, inv_hw, y, arg):  # pragma: no cover - device code
    # x: (P, HW) planes; one thread per plane
    planes, hw = x.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for p in range(start, planes, step):
        best = x[p, 0]
        won = 0
        nan_at = -1
        acc = best - best
        for q in range(hw):
            v = x[p, q]
            acc += v
            t = v > best  # strictly: the first of equal maxima wins
            best = v if t else best
            won = q if t else won
            if v != v and nan_at < 0:
                nan_at = q
        if is_max:
            if nan_at >= 0:  # the first NaN wins, as numpy.argmax
                won = nan_at
                best = x[p, nan_at]
            y[p] = best
            arg[p] = won
        else:
            y[p] = acc * inv_hw


@cuda.jit(cache=True)
def global_pool_bwd_kernel(dy, arg, is_max, inv_hw, zero, dx):  # pragma: no cover - device code
    # dx: (P, HW); one thread per element of dx
    planes, hw = dx.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, planes * hw, step):
        p, q = e // hw, e % hw
        if is_max:
            dx[p, q] = dy[p] if q == arg[p] else zero
        else:
            dx[p, q] = dy[p] * inv_hw
