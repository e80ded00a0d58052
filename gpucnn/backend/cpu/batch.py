"""Batches inside a captured training step, on the CPU (the CUDA twins are in cuda/batch.py).

What changes from one step to the next is read from a batch state array (int64, see
formulas.BATCH_STATE_SIZE), never passed as an argument, so a replayed step reads batch i + 1
after batch i: ``gather_batch`` gathers and normalises batch number state[BATCH_STEP] of a
permutation into static buffers, ``affine_params`` draws that step's augmentation parameters
from the keyed hash, ``record_step`` writes a step's value (loss, gradient norm) into slot
state[BATCH_STEP] of a per-epoch array, and ``batch_state_advance`` moves the state on. The
per-element rules are gpucnn.backend.formulas, which the CUDA kernels compile too: both
devices gather the same bits, equal to gpucnn.data.normalize's, and draw the same parameters.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core.extending import overload

from gpucnn.backend import formulas
from gpucnn.backend.formulas import (
    AUG_ANGLE,
    AUG_FLIP,
    AUG_LANES,
    AUG_SCALE,
    AUG_TX,
    AUG_TY,
    BATCH_EPOCH,
    BATCH_ROWS,
    BATCH_STATE_SIZE,
    BATCH_STEP,
)


# formulas.mul_rn and friends round each operation on its own; Numba's CPU code never fuses a
# multiply and an add (no fast-math), so here they are the plain operations
@overload(formulas.mul_rn, target="cpu", inline="always")
def _mul_rn(a, b):  # pragma: no cover - typing
    return lambda a, b: a * b


@overload(formulas.add_rn, target="cpu", inline="always")
def _add_rn(a, b):  # pragma: no cover - typing
    return lambda a, b: a + b


@overload(formulas.sub_rn, target="cpu", inline="always")
def _sub_rn(a, b):  # pragma: no cover - typing
    return lambda a, b: a - b


def _jit(rule):
    return numba.njit(inline="always", error_model="numpy")(rule)


_normalize = _jit(formulas.normalize_element)
_rows = _jit(formulas.batch_rows)
_advance = _jit(formulas.batch_advance)
_key = _jit(formulas.augment_key)
_draw = _jit(formulas.dropout_draw)
_unit = _jit(formulas.unit_uniform)
_symmetric = _jit(formulas.symmetric_uniform)
_affine = _jit(formulas.affine_element)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _gather(images, labels, perm, state, batch_size, scale, mean, inv_std, out_x, out_y):
    # images (N, P) uint8, out_x (R, P): the flat views
    n, per = images.shape
    first = state[BATCH_STEP] * batch_size
    count = _rows(first, batch_size, perm.shape[0], out_x.shape[0])
    state[BATCH_ROWS] = count
    zero = np.float32(0)
    for r in range(out_x.shape[0]):
        src = perm[first + r] if r < count else -1
        if src < 0 or src >= n:  # past the end of the permutation, or not an image index
            out_x[r, :] = zero
            out_y[r] = -1
            continue
        for k in range(per):
            out_x[r, k] = _normalize(images[src, k], scale, mean, inv_std)
        out_y[r] = labels[src]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _batch_advance(state):
    _advance(state)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _affine_params(state, seed, angle, max_tx, max_ty, lo, width, flip_threshold, inv, shift):
    key = _key(seed, np.uint64(state[BATCH_EPOCH]), np.uint64(state[BATCH_STEP]))
    for i in range(inv.shape[0]):
        lane = AUG_LANES * i
        a, b, c, d, tx, ty = _affine(
            _symmetric(_draw(key, lane + AUG_ANGLE)),
            _symmetric(_draw(key, lane + AUG_TX)),
            _symmetric(_draw(key, lane + AUG_TY)),
            _unit(_draw(key, lane + AUG_SCALE)),
            _draw(key, lane + AUG_FLIP) < flip_threshold,
            angle,
            max_tx,
            max_ty,
            lo,
            width,
        )
        inv[i, 0], inv[i, 1], inv[i, 2], inv[i, 3] = a, b, c, d
        shift[i, 0], shift[i, 1] = tx, ty


def gather_batch(
    images: np.ndarray,
    labels: np.ndarray,
    perm: np.ndarray,
    state: np.ndarray,
    batch_size: int,
    mean: float,
    std: float,
    out_x: np.ndarray,
    out_y: np.ndarray,
) -> None:
    """Gather and normalise batch number s = state[BATCH_STEP] into static buffers.

    Row i < rows of the batch is image j = perm[s*B + i]: out_x[i] = (images[j] / 255 - mean) /
    std, gpucnn.data.normalize's float32 arithmetic (the same bits), out_y[i] = labels[j]. The
    batch has rows = min(B, P - s*B, R) rows (R = len(out_x)), written into state[BATCH_ROWS];
    rows past them (and rows whose perm entry is not an image index) get x = 0 and label -1,
    which makes softmax_xent's loss NaN, so a graph replayed past the data shows it. A
    permutation whose length P is not a multiple of B ends in a shorter batch: it is gathered
    by a second graph whose buffers have R = P mod B rows (the same B).

    Shape: images uint8 (N, C, H, W), labels int64 (N,), perm int64 (P,), state int64
    (BATCH_STATE_SIZE,) -> out_x float32 (R, C, H, W), out_y int64 (R,), 1 <= R <= B.
    """
    formulas.check_gather(images, labels, perm, batch_size, out_x, out_y)
    formulas.check_state("gather_batch", state, np.int64, BATCH_STATE_SIZE)
    n, rows = images.shape[0], out_x.shape[0]
    _gather(
        images.reshape(n, -1),
        labels,
        perm,
        state,
        batch_size,
        *formulas.normalize_constants(mean, std),
        out_x.reshape(rows, -1),
        out_y,
    )


def batch_state_advance(state: np.ndarray) -> None:
    """Move a batch state on to the next batch (once per training step, after its last use)."""
    formulas.check_state("batch_state_advance", state, np.int64, BATCH_STATE_SIZE)
    _batch_advance(state)


def record_step(values: np.ndarray, state: np.ndarray, value: np.ndarray) -> None:
    """values[state[BATCH_STEP]] = value (nothing when the step is past the end of ``values``):
    a step's loss or gradient norm, recorded where the step counter says, so the same launch
    replayed step after step fills a per-epoch array. Shape: values (S,), state int64
    (BATCH_STATE_SIZE,), value one element (0-d or (1,)) of values' dtype."""
    formulas.check_state("record_step", state, np.int64, BATCH_STATE_SIZE)
    if values.ndim != 1 or not values.flags.c_contiguous:
        raise ValueError(
            f"record_step: expected a C-contiguous 1-D values array, got {tuple(values.shape)}"
        )
    if value.size != 1 or value.dtype != values.dtype:
        raise ValueError(
            f"record_step: expected one value of values' dtype {values.dtype}, got "
            f"{tuple(value.shape)} {value.dtype}"
        )
    s = int(state[BATCH_STEP])
    if 0 <= s < values.shape[0]:
        values[s] = value.reshape(1)[0]


def affine_params(
    state: np.ndarray,
    seed: int,
    shape: tuple[int, ...],
    degrees: float,
    translate: tuple[float, float],
    scale: tuple[float, float],
    flip: float,
    out_inv: np.ndarray,
    out_shift: np.ndarray,
) -> None:
    """Draw each image's augmentation for batch state[BATCH_STEP] of epoch state[BATCH_EPOCH]
    into static buffers: affine_warp's inverse matrices and shifts, for augment.RandomAffine's
    ranges (angle uniform in [-degrees, degrees], shift in [-translate * (W, H), +], zoom in
    [lo, hi)), preceded by a horizontal flip with probability ``flip``.

    The draws come from the keyed hash formulas.augment_key(seed, epoch, step), not from a host
    generator: reproducible from (seed, epoch, step) on either device, different from the
    eager path's draws. degrees may be at most 360.

    Shape: ``shape`` is the batch's (N, C, H, W) -> out_inv float32 (N, 4), out_shift (N, 2).
    """
    angle, max_tx, max_ty, lo, width, threshold = formulas.affine_constants(
        shape, degrees, translate, scale, flip
    )
    formulas.check_affine_out(shape, out_inv, out_shift)
    formulas.check_state("affine_params", state, np.int64, BATCH_STATE_SIZE)
    _affine_params(
        state, np.uint64(seed), angle, max_tx, max_ty, lo, width, threshold, out_inv, out_shift
    )
