"""Elementwise CUDA kernels: ReLU, dropout, softmax cross-entropy. One thread per element (per
row for the loss), grid-stride loops. The per-element rules are gpucnn.backend.formulas, the
same source the CPU kernels compile, so both devices compute the same values and the same
dropout masks.
"""

from __future__ import annotations

from numba import cuda

from gpucnn.backend import formulas

_relu = cuda.jit(device=True)(formulas.relu_element)
_relu_grad = cuda.jit(device=True)(formulas.relu_grad_element)
_draw = cuda.jit(device=True)(formulas.dropout_draw)
_dropout = cuda.jit(device=True)(formulas.dropout_element)
_xent_row = cuda.jit(device=True)(formulas.softmax_xent_row)


@cuda.jit(cache=True)
def relu_fwd_kernel(x, zero, y):  # pragma: no cover - compiled
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, x.size, step):
        y[e] = _relu(x[e], zero)


@cuda.jit(cache=True)
def relu_bwd_kernel(dy, y, zero, dx):  # pragma: no cover - compiled
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, dy.size, step):
        dx[e] = _relu_grad(dy[e], y[e], zero)


@cuda.jit(cache=True)
def dropout_fwd_kernel(x, key, first, threshold, scale, zero, out):  # pragma: no cover
    # the backward pass launches this same kernel on dy: the mask is recomputed from the key
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, x.size, step):
        out[e] = _dropout(x[e], _draw(key, first + e), threshold, scale, zero)


@cuda.jit(cache=True)
def softmax_xent_fwd_kernel(logits, labels, scale, one, nan, total, grad):  # pragma: no cover
    start, step = cuda.grid(1), cuda.gridsize(1)
    for r in range(start, logits.shape[0], step):
        loss = _xent_row(logits[r], labels[r], scale, one, nan, grad[r])
        cuda.atomic.add(total, 0, loss * scale)  # the batch mean, in the same launch
