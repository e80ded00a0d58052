"""Elementwise CUDA kernels: ReLU, dropout, softmax cross-entropy. One thread per element (per
row for the loss), grid-stride loops. The per-element rules are gpucnn.backend.formulas, the
same source the CPU kernels compile, so both devices compute the same values and the same
dropout masks.

Dropout takes its mask key one of two ways. ``dropout_fwd`` gets it as a launch argument (nn.Dropout
draws one per step from a host generator). ``dropout_fwd_state`` reads a dropout state array in
device memory, uint64 [seed, step], and derives the key of the step there
(formulas.dropout_step_key); ``dropout_state_advance`` (one thread) moves it to the next step.
No key then crosses from the host, so a step captured into a CUDA graph draws a new mask at
each replay: the graph path gives each Dropout layer a state array made once, seeded from the
layer's generator, launches dropout_fwd_state in forward and dropout_bwd_state (the same mask)
in backward, and dropout_state_advance once per step after backward; the array is saved and
restored (in place) with the model. The masks are those of dropout_fwd under
dropout_step_key(seed, step), on either device, not those of the host generator's keys: the
default path stays as it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpucnn.backend import formulas
from gpucnn.backend.cuda.launch import array_module, check, config, flat, stream
from gpucnn.backend.formulas import DROPOUT_SEED, DROPOUT_STEP
from gpucnn.backend.numba_cuda import cuda

_relu = cuda.jit(device=True)(formulas.relu_element)
_relu_grad = cuda.jit(device=True)(formulas.relu_grad_element)
_draw = cuda.jit(device=True)(formulas.dropout_draw)
_dropout = cuda.jit(device=True)(formulas.dropout_element)
_step_key = cuda.jit(device=True)(formulas.dropout_step_key)
_dropout_advance = cuda.jit(device=True)(formulas.dropout_advance)
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
def dropout_fwd_state_kernel(x, state, first, threshold, scale, zero, out):  # pragma: no cover
    key = _step_key(state[DROPOUT_SEED], state[DROPOUT_STEP])  # this step's key, on the device
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, x.size, step):
        out[e] = _dropout(x[e], _draw(key, first + e), threshold, scale, zero)


@cuda.jit(cache=True)
def dropout_state_advance_kernel(state):  # pragma: no cover - one thread
    if cuda.grid(1) == 0:
        _dropout_advance(state)


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
    relu_fwd_kernel[config(x.size)](flat(x), x.dtype.type(0), flat(y))
    return y


def relu_bwd(dy: Any, y: Any) -> Any:
    """dx = dy where y > 0, else 0. Shape: any -> same."""
    check("relu_bwd", dy, dy.ndim, contiguous=False)
    dx = array_module(dy).empty(dy.shape, dtype=dy.dtype)
    relu_bwd_kernel[config(dy.size)](flat(dy), flat(y), dy.dtype.type(0), flat(dx))
    return dx


def dropout_fwd(x: Any, p: float, key: int, start: int = 0) -> Any:
    """Inverted dropout, the mask drawn under ``key`` for elements numbered from ``start`` (the
    CPU twin draws the same mask)."""
    check("dropout", x, x.ndim, contiguous=False)
    threshold, scale = formulas.dropout_constants(p)
    out = array_module(x).empty(x.shape, dtype=x.dtype)
    dropout_fwd_kernel[config(x.size)](
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


def dropout_fwd_state(x: Any, p: float, state: Any, start: int = 0) -> Any:
    """dropout_fwd with the key of this step read from ``state`` (uint64 [seed, step] in device
    memory) on the device: the mask of dropout_fwd(x, p, dropout_step_key(seed, step), start)."""
    check("dropout", x, x.ndim, contiguous=False)
    formulas.check_state("dropout_fwd_state", state, np.uint64, 2)
    threshold, scale = formulas.dropout_constants(p)
    out = array_module(x).empty(x.shape, dtype=x.dtype)
    dropout_fwd_state_kernel[config(x.size)](
        flat(x), state, start, threshold, x.dtype.type(scale), x.dtype.type(0), flat(out)
    )
    return out


def dropout_bwd_state(dy: Any, p: float, state: Any, start: int = 0) -> Any:
    """dx = dy * mask / (1 - p), the mask of the same step recomputed from ``state``."""
    return dropout_fwd_state(dy, p, state, start)


def dropout_state_advance(state: Any) -> None:
    """Move a dropout state on to the next step's mask (one thread, once per training step)."""
    formulas.check_state("dropout_state_advance", state, np.uint64, 2)
    dropout_state_advance_kernel[1, 1, stream()](state)


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
    softmax_xent_fwd_kernel[config(n)](
        logits, labels.astype(np.int64, copy=False), dt(1 / n), dt(1), dt(np.nan), total, grad
    )
    return total.reshape(()), grad
