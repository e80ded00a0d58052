"""Elementwise CUDA kernels: ReLU, dropout, softmax cross-entropy. One thread per element (per
row for the loss), grid-stride loops. The per-element rules are gpucnn.backend.formulas, the
same source the CPU kernels compile, so both devices compute the same values and the same
dropout masks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpucnn.backend import formulas
from gpucnn.backend.cuda.launch import THREADS, array_module, blocks, check, flat
from gpucnn.backend.numba_cuda import cuda

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


def relu_fwd(x: Any) -> Any:
    """y = max(x, 0), NaN kept. Shape: any -> same."""
    check("relu", x, x.ndim, contiguous=False)
    y = array_module(x).empty(x.shape, dtype=x.dtype)
    relu_fwd_kernel[blocks(x.size), THREADS](flat(x), x.dtype.type(0), flat(y))
    return y


def relu_bwd(dy: Any, y: Any) -> Any:
    """dx = dy where y > 0, else 0. Shape: any -> same."""
    check("relu_bwd", dy, dy.ndim, contiguous=False)
    dx = array_module(dy).empty(dy.shape, dtype=dy.dtype)
    relu_bwd_kernel[blocks(dy.size), THREADS](flat(dy), flat(y), dy.dtype.type(0), flat(dx))
    return dx


def dropout_fwd(x: Any, p: float, key: int, start: int = 0) -> Any:
    """Inverted dropout, the mask drawn under ``key`` for elements numbered from ``start`` (the
    CPU twin draws the same mask)."""
    check("dropout", x, x.ndim, contiguous=False)
    threshold, scale = formulas.dropout_constants(p)
    out = array_module(x).empty(x.shape, dtype=x.dtype)
    dropout_fwd_kernel[blocks(x.size), THREADS](
        flat(x),
        np.uint64(key),
        start,
        threshold,
        x.dtype.type(scale),
        x.dtype.type(0),
        flat(out),
    )
    return out


def dropout_bwd(dy: Any, p: float, key: int, start: int = 0) -> Any:
    """dx = dy * mask / (1 - p), the mask recomputed from ``key``."""
    return dropout_fwd(dy, p, key, start)


def softmax_xent_fwd(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Mean softmax cross-entropy and its gradient in one launch (one thread per row).

    Shape: logits (N, K), labels (N,) -> loss (0-d), dlogits (N, K) = (softmax - onehot) / N.
    A label outside [0, K) makes the loss NaN (checked on the device, without a sync).
    """
    check("softmax_xent", logits, 2)
    xp = array_module(logits)
    n = logits.shape[0]
    dt = logits.dtype.type
    total = xp.zeros(1, dtype=logits.dtype)
    grad = xp.empty(logits.shape, dtype=logits.dtype)
    softmax_xent_fwd_kernel[blocks(n), THREADS](
        logits, labels.astype(np.int64, copy=False), dt(1 / n), dt(1), dt(np.nan), total, grad
    )
    return total.reshape(()), grad
