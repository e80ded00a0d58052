"""Per-element update rules written once, compiled twice: by numba.njit for the CPU kernels
and by numba.cuda.jit(device=True) for the CUDA kernels.

Plain Python on scalars, so each rule reads like its equation. The constants arrive as scalars
of the array's dtype (a float literal here could turn float32 math into float64 on the GPU;
tests/backend/test_cuda_ptx.py checks the PTX). Comparisons are written as selects rather than
max(): Numba compiles its CUDA max through a device dispatcher that needs a GPU even to emit
PTX, so that test could not see those kernels.
"""

from __future__ import annotations

import math

import numpy as np

# splitmix64 (Steele, Lea & Flood 2014) constants. They are np.uint64 so that Numba types every
# operation on them as uint64 (mixing uint64 with a plain int would make it float64).
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S40 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40)
DROPOUT_BITS = 24  # a mask draw is the top 24 bits of the hash: exact in float32, and p rounds
# to a multiple of 2^-24


def relu_element(x, zero):
    """max(x, 0), letting a NaN through (a NaN must stay visible downstream)."""
    return zero if x <= zero else x


def relu_grad_element(dy, y, zero):
    """dL/dx given y = relu(x): dy where y > 0, else 0 (the subgradient at 0 is 0, as PyTorch)."""
    return dy if y > zero else zero


def dropout_constants(p):
    """(threshold, scale) for drop probability p: an element survives when its 24-bit draw is
    >= threshold = round(p * 2^24), and survivors are scaled by 1 / (1 - p)."""
    threshold = np.uint64(round(p * 2**DROPOUT_BITS))
    return threshold, (0.0 if p >= 1.0 else 1.0 / (1.0 - p))


def dropout_draw(key, index):
    """A uniform 24-bit integer for element ``index`` of the mask drawn under ``key``.

    Counter-based: splitmix64 of key + (index + 1) * golden ratio. The mask is a pure function
    of (key, index), so the backward pass recomputes it instead of storing it, the CPU and the
    GPU draw the same mask, and resuming needs only the host generator that hands out keys.
    """
    z = key + (np.uint64(index) + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return (z ^ (z >> _S31)) >> _S40


def dropout_element(x, draw, threshold, scale, zero):
    """Inverted dropout of one element: x * scale if its draw >= threshold (= p * 2^24), else 0."""
    return x * scale if draw >= threshold else zero


def softmax_xent_row(z, label, scale, one, nan, grad):
    """Cross-entropy of one row of logits ``z`` (K,) against ``label``; writes the row's gradient
    (softmax(z) - onehot(label)) * scale into ``grad`` (K,) and returns the loss
    logsumexp(z) - z[label]. A label outside [0, K) gives NaN loss and gradient, so a bad label
    on the device surfaces as a non-finite loss rather than as a read out of bounds.
    """
    k = z.shape[0]
    top = z[0]
    for j in range(1, k):
        top = z[j] if z[j] > top else top
    total = one - one
    for j in range(k):
        total += math.exp(z[j] - top)
    lse = top + math.log(total)
    if label < 0 or label >= k:
        for j in range(k):
            grad[j] = nan
        return nan
    for j in range(k):
        p = math.exp(z[j] - lse)
        grad[j] = (p - one if j == label else p) * scale
    return lse - z[label]


def adam_element(w, g, m, v, vmax, amsgrad, step_size, b1c, b2, b2c, sqrt_bc2, eps, wd):
    """Adam/AMSGrad for one element (see gpucnn.optim.Adam). Returns (w, m, v, vmax).

    b1c = 1 - beta1, b2c = 1 - beta2, sqrt_bc2 = sqrt(1 - beta2^t), step_size = lr / (1 - beta1^t).
    """
    g = g + wd * w
    m = m + b1c * (g - m)
    v = b2 * v + b2c * g * g
    vhat = v
    if amsgrad:
        vmax = v if v > vmax else vmax
        vhat = vmax
    w = w - step_size * (m / (math.sqrt(vhat) / sqrt_bc2 + eps))
    return w, m, v, vmax


def sgd_element(w, g, buf, first, lr, momentum, damp_c, wd, nesterov):
    """SGD with momentum for one element (see gpucnn.optim.SGD). Returns (w, buf).

    damp_c = 1 - dampening; ``first`` is the first step, when the buffer starts as g.
    """
    g = g + wd * w
    if momentum != 0:
        buf = g if first else momentum * buf + damp_c * g
        g = g + momentum * buf if nesterov else buf
    return w - lr * g, buf


def adam_constants(dtype, step_size, beta1, beta2, bias_correction2, eps, weight_decay):
    """adam_element's constants, as scalars of ``dtype``, in its argument order."""
    dt = dtype.type
    return (
        dt(step_size),
        dt(1 - beta1),
        dt(beta2),
        dt(1 - beta2),
        dt(math.sqrt(bias_correction2)),
        dt(eps),
        dt(weight_decay),
    )


def sgd_constants(dtype, lr, momentum, dampening, weight_decay):
    """sgd_element's constants (lr, momentum, damp_c, wd) as scalars of ``dtype``."""
    dt = dtype.type
    return dt(lr), dt(momentum), dt(1 - dampening), dt(weight_decay)


def check_same_layout(name, *arrays):
    """Raise unless every array has the first one's shape and dtype and is C-contiguous."""
    shape, dtype = arrays[0].shape, arrays[0].dtype
    for a in arrays:
        if a.shape != shape or a.dtype != dtype or not a.flags.c_contiguous:
            raise ValueError(
                f"{name}: every array must be C-contiguous with shape {tuple(shape)} and dtype "
                f"{dtype}, got {tuple(a.shape)} {a.dtype}"
            )
