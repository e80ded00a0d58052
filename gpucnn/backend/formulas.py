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


def max4_element(a, b, c, d):
    """The winner of a 2×2 window (a, b in the top row, c, d below) and its index i*2 + j.

    The first of equal maxima wins, and a NaN wins (the first NaN, its value the NaN): a NaN in
    the input stays visible downstream. Selects, not branches: on random activations "is b
    bigger than a" is a coin flip a branch predictor loses (see cpu/pool.py); NaNs take a rare
    branch. Returns (best, won)."""
    t = b > a
    best = b if t else a
    won = 1 if t else 0
    t = c > best
    best = c if t else best
    won = 2 if t else won
    t = d > best
    best = d if t else best
    won = 3 if t else won
    if a != a or b != b or c != c or d != d:
        won = 0 if a != a else (1 if b != b else (2 if c != c else 3))
        best = a + b + c + d
    return best, won


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


# Batches inside a captured training step (backend/cpu|cuda/batch.py). A batch state is an
# int64 array of BATCH_STATE_SIZE slots in device memory:
#   BATCH_STEP   the batch number within the epoch: gather_batch reads perm[step*B : step*B+B]
#   BATCH_EPOCH  the epoch: with the step, it keys the augmentation draws (augment_key)
#   BATCH_ROWS   written by gather_batch: rows it took from perm (the tail batch has fewer)
# batch_advance (one thread, once per step, after the step's last read) adds 1 to the step; at
# the start of an epoch the host writes batch_state(epoch) with the epoch's permutation.
BATCH_STEP, BATCH_EPOCH, BATCH_ROWS = 0, 1, 2
BATCH_STATE_SIZE = 4
# One image's augmentation draws are dropout_draw(key, AUG_LANES * image + lane), lane one of:
AUG_ANGLE, AUG_TX, AUG_TY, AUG_SCALE, AUG_FLIP = range(5)
AUG_LANES = 5
MAX_DEGREES = 360.0  # affine_element's sine and cosine hold for |angle| <= 2 pi

_I1, _I2, _I2P24 = np.int64(1), np.int64(2), np.int64(1 << DROPOUT_BITS)
_UNIT24 = np.float32(2.0**-DROPOUT_BITS)
_EIGHTH, _F2 = np.float32(0.125), np.float32(2.0)
# Taylor coefficients, highest power first, of sin(h)/h and cos(h) in h^2: for |h| <= pi/4 the
# first term left out is below 2e-9, under half an ulp of float32
_SIN = tuple(np.float32(c) for c in (1 / 362880, -1 / 5040, 1 / 120, -1 / 6, 1))
_COS = tuple(np.float32(c) for c in (-1 / 3628800, 1 / 40320, -1 / 720, 1 / 24, -1 / 2, 1))


def mul_rn(a, b):
    """a * b, rounded on its own. Plain on the CPU; on a GPU (backend/cuda/batch.py) it is
    __fmul_rn, which ptxas never fuses with an add into an FMA (it fuses a plain multiply and
    add, which rounds once instead of twice): so the rules below give the same bits on both."""
    return a * b


def add_rn(a, b):
    """a + b, rounded on its own (never fused with a multiply; see mul_rn)."""
    return a + b


def sub_rn(a, b):
    """a - b, rounded on its own (never fused with a multiply; see mul_rn)."""
    return a - b


def normalize_constants(mean, std):
    """(scale, mean, inv_std) for normalize_element: gpucnn.data.normalize's float32 scalars."""
    if not std > 0:
        raise ValueError(f"normalize: std must be > 0, got {std!r}")
    return np.float32(1.0 / 255.0), np.float32(mean), np.float32(1.0) / np.float32(std)


def normalize_element(pixel, scale, mean, inv_std):
    """One uint8 pixel as gpucnn.data.normalize computes it: (pixel * scale - mean) * inv_std in
    float32, each operation rounded on its own, as NumPy's and CuPy's separate array operations
    round it (scale = float32(1/255), inv_std = float32(1) / float32(std))."""
    return mul_rn(sub_rn(mul_rn(np.float32(pixel), scale), mean), inv_std)


def batch_rows(first, batch_size, total, capacity):
    """Rows of the batch that starts at ``first`` of ``total``: batch_size, fewer at the end of
    the permutation (0 past it), at most the ``capacity`` of the output buffers."""
    rows = batch_size if batch_size < capacity else capacity
    left = total - first
    rows = left if left < rows else rows
    return rows if rows > 0 else 0


def batch_advance(state):
    """Move a batch state on to the next batch (one thread, once per training step)."""
    state[BATCH_STEP] = state[BATCH_STEP] + 1


def augment_key(seed, epoch, step):
    """The uint64 key of the augmentation draws of batch ``step`` of ``epoch`` under ``seed``
    (all uint64): dropout_step_key applied twice, splitmix64 of the seed with the epoch, then of
    that with the step."""
    z = seed + (epoch + _ONE) * _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    z = z ^ (z >> _S31)
    z = z + (step + _ONE) * _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


def unit_uniform(draw):
    """A 24-bit draw (dropout_draw) as a float32 uniform on [0, 1): draw * 2^-24, exact."""
    return mul_rn(np.float32(draw), _UNIT24)


def symmetric_uniform(draw):
    """A 24-bit draw as a float32 uniform on (-1, 1), symmetric about 0: (2 draw + 1 - 2^24) *
    2^-24, exact (an odd integer below 2^24 in magnitude, times a power of two)."""
    return mul_rn(np.float32(np.int64(draw) * _I2 + _I1 - _I2P24), _UNIT24)


def affine_element(v_angle, v_tx, v_ty, u_scale, flip, angle, max_tx, max_ty, lo, width):
    """One image's affine_warp parameters (a, b, c, d, tx, ty), as augment.RandomAffine draws
    them, from uniforms v on (-1, 1) and u on [0, 1): the angle theta = angle * v_angle (angle =
    radians(degrees) <= 2 pi), the shift (max_tx * v_tx, max_ty * v_ty) pixels, the zoom s = lo
    + width * u_scale; (a, b, c, d) = (cos, sin, -sin, cos)(theta) / s, the inverse of s R(theta)
    that augment.affine builds, with the first row negated when ``flip`` (a horizontal flip
    before the warp, as RandomHorizontalFlip before RandomAffine).

    sin and cos in float32 from + - * alone, each rounded on its own (so both devices give the
    same bits): Taylor polynomials at h = theta / 8, then three doublings
    (sin 2h = 2 sin h cos h, cos 2h = (cos h - sin h)(cos h + sin h)); error about 1e-7.
    """
    h = mul_rn(mul_rn(angle, v_angle), _EIGHTH)
    h2 = mul_rn(h, h)
    s = _SIN[0]
    for k in range(1, len(_SIN)):
        s = add_rn(mul_rn(s, h2), _SIN[k])
    s = mul_rn(s, h)
    c = _COS[0]
    for k in range(1, len(_COS)):
        c = add_rn(mul_rn(c, h2), _COS[k])
    for _ in range(3):
        s, c = mul_rn(mul_rn(s, c), _F2), mul_rn(sub_rn(c, s), add_rn(c, s))
    zoom = add_rn(lo, mul_rn(width, u_scale))
    a = c / zoom
    b = s / zoom
    return (
        (-a if flip else a),
        (-b if flip else b),
        -b,
        a,
        mul_rn(max_tx, v_tx),
        mul_rn(max_ty, v_ty),
    )


def affine_constants(shape, degrees, translate, scale, flip):
    """affine_element's constants (angle, max_tx, max_ty, lo, width) as float32 and the flip
    threshold (an image is flipped when its 24-bit draw < threshold = round(flip * 2^24)), for
    images of ``shape`` (N, C, H, W) and RandomAffine's ranges; raises on ranges it refuses."""
    if len(shape) != 4:
        raise ValueError(f"affine_params: expected a batch shape (N, C, H, W), got {shape}")
    if not 0.0 <= degrees <= MAX_DEGREES:
        raise ValueError(f"affine_params: degrees must be in [0, {MAX_DEGREES}], got {degrees!r}")
    if len(translate) != 2 or not all(0.0 <= f <= 1.0 for f in translate):
        raise ValueError(f"affine_params: translate fractions must be in [0, 1], got {translate}")
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"affine_params: scale must be (lo, hi) with 0 < lo <= hi, got {scale}")
    if not 0.0 <= flip <= 1.0:
        raise ValueError(f"affine_params: flip must be in [0, 1], got {flip!r}")
    h, w = shape[2], shape[3]
    f32 = np.float32
    return (
        f32(math.radians(degrees)),
        f32(translate[0] * w),
        f32(translate[1] * h),
        f32(scale[0]),
        f32(scale[1] - scale[0]),
        np.uint64(round(flip * 2**DROPOUT_BITS)),
    )


def batch_state(epoch=0, step=0):
    """A host batch state: int64 [step, epoch, rows = 0, 0] (see BATCH_STATE_SIZE)."""
    state = np.zeros(BATCH_STATE_SIZE, np.int64)
    state[BATCH_STEP], state[BATCH_EPOCH] = step, epoch
    return state


def check_gather(images, labels, perm, batch_size, out_x, out_y):
    """Raise unless gather_batch's arrays fit: images uint8 (N, C, H, W), labels int64 (N,),
    perm int64 (P,), out_x float32 (R, C, H, W) and out_y int64 (R,) with 1 <= R <= batch_size,
    all C-contiguous."""

    def need(ok, what, a):
        if not ok or not a.flags.c_contiguous:
            raise ValueError(
                f"gather_batch: expected {what} (C-contiguous), got {a.dtype} {tuple(a.shape)}"
            )

    need(images.ndim == 4 and images.dtype == np.uint8, "images uint8 (N, C, H, W)", images)
    n = images.shape[0]
    need(labels.shape == (n,) and labels.dtype == np.int64, f"labels int64 ({n},)", labels)
    need(perm.ndim == 1 and perm.dtype == np.int64, "perm int64 (P,)", perm)
    if batch_size < 1:
        raise ValueError(f"gather_batch: batch_size must be >= 1, got {batch_size}")
    rows = out_x.shape[0] if out_x.ndim else 0
    shape = f"out_x float32 (R, {', '.join(map(str, images.shape[1:]))}), 1 <= R <= {batch_size}"
    need(
        out_x.shape[1:] == images.shape[1:] and out_x.dtype == np.float32
        and 1 <= rows <= batch_size,
        shape,
        out_x,
    )  # fmt: skip
    need(out_y.shape == (rows,) and out_y.dtype == np.int64, f"out_y int64 ({rows},)", out_y)


def check_affine_out(shape, out_inv, out_shift):
    """Raise unless out_inv is float32 (N, 4) and out_shift float32 (N, 2), C-contiguous."""
    n = shape[0]
    for name, a, k in (("out_inv", out_inv, 4), ("out_shift", out_shift, 2)):
        if a.shape != (n, k) or a.dtype != np.float32 or not a.flags.c_contiguous:
            raise ValueError(
                f"affine_params: expected {name} float32 ({n}, {k}) (C-contiguous), got "
                f"{a.dtype} {tuple(a.shape)}"
            )
