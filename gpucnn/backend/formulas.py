"""Per-element update rules written once, compiled twice: by numba.njit for the CPU kernels
and by numba.cuda.jit(device=True) for the CUDA kernels.

Plain Python on scalars, so each rule reads like its equation. The constants arrive as scalars
of the array's dtype (a float literal here could turn float32 math into float64 on the GPU;
tests/backend/test_cuda_ptx.py checks the PTX). Comparisons are written as selects rather than
max(): Numba compiles its CUDA max through a device dispatcher that needs a GPU even to emit
PTX, so that test could not see those kernels.

The layouts of the step-state arrays (what changes from one training step to the next, kept
in device memory for a step replayed from a CUDA graph) are here too, with the one-thread
rules that advance them.
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
_ONE = np.uint64(1)

# A dropout state: uint64 [seed, step]. The mask of a step is drawn under
# dropout_step_key(seed, step); dropout_advance adds 1 to step once per training step.
DROPOUT_SEED, DROPOUT_STEP = 0, 1

# An optimizer's step state (gpucnn.optim with device_state=True): what changes from one step
# to the next, kept in device memory, because a CUDA graph replays its launches with the
# arguments they were captured with. One float64 array of STATE_SIZE slots:
#   [0, 9)    STATE_T (steps taken), STATE_LR, STATE_BETA1, STATE_BETA2, STATE_EPS,
#             STATE_WEIGHT_DECAY, STATE_MOMENTUM, STATE_DAMPENING, STATE_NESTEROV (1 or 0):
#             written by the host (the learning rate by Optimizer.lr's setter, with no sync)
#   [10, 22)  the step's constants K_* in float64, written by optim_advance
#   [22, 28)  the same constants rounded to float32 (12 float32 in 6 slots); 28-31 spare
# optim_advance (one thread, once per step, before the update kernels) adds 1 to T and
# computes the constants from T and the hyperparameters in float64, as the host path computes
# them, so an update kernel reading its dtype's constants gets the bits the host path passes.
(
    STATE_T,
    STATE_LR,
    STATE_BETA1,
    STATE_BETA2,
    STATE_EPS,
    STATE_WEIGHT_DECAY,
    STATE_MOMENTUM,
    STATE_DAMPENING,
    STATE_NESTEROV,
) = range(9)
(
    K_STEP_SIZE,  # lr / (1 - beta1^t)
    K_B1C,  # 1 - beta1
    K_B2,
    K_B2C,  # 1 - beta2
    K_SQRT_BC2,  # sqrt(1 - beta2^t)
    K_EPS,
    K_WD,
    K_LR,
    K_MOMENTUM,
    K_DAMP_C,  # 1 - dampening
    K_FIRST,  # 1 at the first step (SGD's momentum buffer starts as the gradient), else 0
    K_NESTEROV,
) = range(12)
N_CONSTANTS = 12
C64_START, C32_START, STATE_SIZE = 10, 22, 32


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


def dropout_step_key(seed, step):
    """The 64-bit mask key of training step ``step`` under ``seed`` (both uint64): splitmix64 of
    seed + (step + 1) * golden ratio, dropout_draw's mixing with all 64 bits kept. The
    device-counter dropout kernels compute it from a dropout state array (see DROPOUT_SEED),
    so no key crosses from the host per step; dropout_fwd(x, p, dropout_step_key(seed, s))
    draws the same mask."""
    z = seed + (step + _ONE) * _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


def dropout_advance(state):
    """Move a dropout state array on to the next training step (one thread, once per step)."""
    state[DROPOUT_STEP] = state[DROPOUT_STEP] + _ONE


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


def optim_advance(state, c64, c32):
    """Start a step: T += 1, then the step's constants from T and the hyperparameters into c64
    (float64) and c32 (float32), the two constant blocks of ``state`` (see STATE_SIZE).

    Float64 on purpose: these are the host path's float64 expressions (Adam.lr / (1 - b1**t),
    1 - b2**t, ...), so the rounded constants are the ones the host path passes."""
    t = state[STATE_T] + 1.0
    state[STATE_T] = t
    lr = state[STATE_LR]
    b1 = state[STATE_BETA1]
    b2 = state[STATE_BETA2]
    c64[K_STEP_SIZE] = lr / (1.0 - b1**t)
    c64[K_B1C] = 1.0 - b1
    c64[K_B2] = b2
    c64[K_B2C] = 1.0 - b2
    c64[K_SQRT_BC2] = math.sqrt(1.0 - b2**t)
    c64[K_EPS] = state[STATE_EPS]
    c64[K_WD] = state[STATE_WEIGHT_DECAY]
    c64[K_LR] = lr
    c64[K_MOMENTUM] = state[STATE_MOMENTUM]
    c64[K_DAMP_C] = 1.0 - state[STATE_DAMPENING]
    c64[K_FIRST] = 1.0 if t == 1.0 else 0.0
    c64[K_NESTEROV] = state[STATE_NESTEROV]
    for k in range(N_CONSTANTS):
        c32[k] = c64[k]


def step_state(
    t=0,
    lr=0.0,
    *,
    beta1=0.0,
    beta2=0.0,
    eps=0.0,
    weight_decay=0.0,
    momentum=0.0,
    dampening=0.0,
    nesterov=False,
):
    """A host step-state array after ``t`` steps, as the device's would be: the hyperparameter
    slots set and, for t >= 1, the constants of step t (computed by optim_advance itself)."""
    state = np.zeros(STATE_SIZE, np.float64)
    state[:9] = (max(t - 1, 0), lr, beta1, beta2, eps, weight_decay, momentum, dampening, nesterov)
    if t >= 1:
        optim_advance(state, *constant_blocks(state))
    return state


def constant_blocks(state):
    """(float64, float32) views of the two constant blocks of a step-state array."""
    return (
        state[C64_START : C64_START + N_CONSTANTS],
        state[C32_START : C32_START + N_CONSTANTS // 2].view(np.float32),
    )


def step_constants(state, dtype):
    """The step's constants (K_* order) in ``dtype``: a view of the step-state array."""
    c64, c32 = constant_blocks(state)
    return c64 if np.dtype(dtype) == np.dtype(np.float64) else c32


def dropout_state(seed, step=0):
    """A host dropout state array: uint64 [seed, step]."""
    return np.array([seed, step], dtype=np.uint64)


def check_state(name, state, dtype, size):
    """Raise unless ``state`` is a C-contiguous 1-D array of ``size`` elements of ``dtype``."""
    if (
        state.shape != (size,)
        or np.dtype(state.dtype) != np.dtype(dtype)
        or not state.flags.c_contiguous
    ):
        raise ValueError(
            f"{name}: expected a C-contiguous ({size},) {np.dtype(dtype)} state array, got "
            f"{tuple(state.shape)} {state.dtype}"
        )


def check_same_layout(name, *arrays):
    """Raise unless every array has the first one's shape and dtype and is C-contiguous."""
    shape, dtype = arrays[0].shape, arrays[0].dtype
    for a in arrays:
        if a.shape != shape or a.dtype != dtype or not a.flags.c_contiguous:
            raise ValueError(
                f"{name}: every array must be C-contiguous with shape {tuple(shape)} and dtype "
                f"{dtype}, got {tuple(a.shape)} {a.dtype}"
            )
