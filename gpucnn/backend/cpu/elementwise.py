"""Elementwise kernels on the CPU: ReLU, dropout and softmax cross-entropy (the CUDA twins are
in cuda/elementwise.py). The per-element rules are gpucnn.backend.formulas, compiled here by
numba.njit and there by numba.cuda, so the two devices compute the same thing, dropout masks
included.

Each kernel runs over a range [lo, hi) of its elements (rows, for the loss), so
gpucnn.backend.cpu.threads can split it over the cores; ranges below threads.GRAIN elements are not
worth a hand-off to another thread.
"""

from __future__ import annotations

import numba
import numpy as np

from gpucnn.backend import formulas
from gpucnn.backend.cpu import threads

_relu = numba.njit(inline="always", error_model="numpy")(formulas.relu_element)
_relu_grad = numba.njit(inline="always", error_model="numpy")(formulas.relu_grad_element)
_draw = numba.njit(inline="always", error_model="numpy")(formulas.dropout_draw)
_dropout_element = numba.njit(inline="always", error_model="numpy")(formulas.dropout_element)
_step_key = numba.njit(inline="always", error_model="numpy")(formulas.dropout_step_key)
_advance = numba.njit(inline="always", error_model="numpy")(formulas.dropout_advance)
_xent_row = numba.njit(inline="always", error_model="numpy")(formulas.softmax_xent_row)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _relu_fwd(x, y, lo, hi):  # pragma: no cover - compiled
    zero = x.dtype.type(0)
    for e in range(lo, hi):
        y[e] = _relu(x[e], zero)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _relu_bwd(dy, y, dx, lo, hi):  # pragma: no cover - compiled
    zero = dy.dtype.type(0)
    for e in range(lo, hi):
        dx[e] = _relu_grad(dy[e], y[e], zero)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _dropout(x, key, start, threshold, scale, out, lo, hi):  # pragma: no cover - compiled
    zero = x.dtype.type(0)
    for e in range(lo, hi):
        out[e] = _dropout_element(x[e], _draw(key, start + e), threshold, scale, zero)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _dropout_state(x, state, start, threshold, scale, out, lo, hi):  # pragma: no cover
    key = _step_key(state[formulas.DROPOUT_SEED], state[formulas.DROPOUT_STEP])
    zero = x.dtype.type(0)
    for e in range(lo, hi):
        out[e] = _dropout_element(x[e], _draw(key, start + e), threshold, scale, zero)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _dropout_advance(state):  # pragma: no cover - compiled
    _advance(state)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _xent(logits, labels, scale, one, nan, losses, grad, lo, hi):  # pragma: no cover
    for r in range(lo, hi):
        losses[r] = _xent_row(logits[r], labels[r], scale, one, nan, grad[r])


def _flat(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).reshape(-1)


def relu_fwd(x: np.ndarray) -> np.ndarray:
    """y = max(x, 0), NaN kept. Shape: any -> same."""
    y = np.empty(x.shape, x.dtype)
    threads.split(_relu_fwd, y.size, _flat(x), y.reshape(-1), grain=threads.GRAIN)
    return y


def relu_bwd(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dx = dy where y > 0, else 0. Shape: any -> same."""
    dx = np.empty(dy.shape, dy.dtype)
    threads.split(_relu_bwd, dx.size, _flat(dy), _flat(y), dx.reshape(-1), grain=threads.GRAIN)
    return dx


def dropout_fwd(x: np.ndarray, p: float, key: int, start: int = 0) -> np.ndarray:
    """Inverted dropout with the mask drawn under ``key``; x's elements are numbered from
    ``start``. Shape: any -> same."""
    threshold, scale = formulas.dropout_constants(p)
    out = np.empty(x.shape, x.dtype)
    args = (_flat(x), np.uint64(key), start, threshold, x.dtype.type(scale), out.reshape(-1))
    threads.split(_dropout, out.size, *args, grain=threads.GRAIN)
    return out


def dropout_bwd(dy: np.ndarray, p: float, key: int, start: int = 0) -> np.ndarray:
    """dx = dy * mask / (1 - p), the forward pass's mask recomputed from ``key``."""
    return dropout_fwd(dy, p, key, start)


def dropout_fwd_state(x: np.ndarray, p: float, state: np.ndarray, start: int = 0) -> np.ndarray:
    """dropout_fwd with the key of this step drawn from ``state`` (uint64 [seed, step], see
    formulas.dropout_step_key) where the kernel runs: the mask of
    dropout_fwd(x, p, dropout_step_key(seed, step), start)."""
    formulas.check_state("dropout_fwd_state", state, np.uint64, 2)
    threshold, scale = formulas.dropout_constants(p)
    out = np.empty(x.shape, x.dtype)
    args = (_flat(x), state, start, threshold, x.dtype.type(scale), out.reshape(-1))
    threads.split(_dropout_state, out.size, *args, grain=threads.GRAIN)
    return out


def dropout_bwd_state(dy: np.ndarray, p: float, state: np.ndarray, start: int = 0) -> np.ndarray:
    """dx = dy * mask / (1 - p), the mask of the same step recomputed from ``state``."""
    return dropout_fwd_state(dy, p, state, start)


def dropout_state_advance(state: np.ndarray) -> None:
    """Move a dropout state on to the next step's mask (once per training step)."""
    formulas.check_state("dropout_state_advance", state, np.uint64, 2)
    _dropout_advance(state)


def softmax_xent_fwd(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean softmax cross-entropy and its gradient, in one pass over the rows.

    Shape: logits (N, K), labels (N,) -> loss (0-d), dlogits (N, K) = (softmax - onehot) / N.
    """
    n = logits.shape[0]
    dt = logits.dtype.type
    losses = np.empty(n, logits.dtype)
    grad = np.empty(logits.shape, logits.dtype)
    args = (np.ascontiguousarray(logits), labels.astype(np.int64), dt(1 / n), dt(1), dt(np.nan))
    threads.split(_xent, n, *args, losses, grad, grain=threads.grain(logits.shape[1]))
    return losses.mean(dtype=logits.dtype), grad
