"""Batches inside a captured training step, on the GPU: the twins of cpu/batch.py.

A step captured into a CUDA graph replays its launches with the arguments they were captured
with, so what changes per step is read from a batch state array in device memory (int64,
formulas.BATCH_STATE_SIZE): ``gather_batch`` gathers batch number state[BATCH_STEP] of a
device permutation from the GPU-resident uint8 dataset into static buffers and normalises it,
``affine_params`` draws that step's augmentation parameters on the device from the keyed hash
(formulas.augment_key of the seed, epoch and step), ``record_step`` (one thread) writes a
step's value (its loss, its gradient norm) into slot state[BATCH_STEP] of a per-epoch array,
and ``batch_state_advance`` (one thread) moves the state on. A step makes no host-to-device
copy; nothing is allocated.

The per-element rules are gpucnn.backend.formulas, which the CPU kernels compile too. Their
float operations are formulas.mul_rn, add_rn and sub_rn, which here are libdevice's
__fmul_rn, __fadd_rn and __fsub_rn: ptxas fuses a plain multiply and add into an FMA (one
rounding instead of two), which these never are, so the normalised pixels are
gpucnn.data.normalize's bits (CuPy's separate array operations) and the augmentation
parameters are the CPU twin's bits.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from gpucnn.backend import formulas
from gpucnn.backend.cuda.launch import config, stream
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
from gpucnn.backend.numba_cuda import cuda


def _register_rounded_operations() -> None:
    """formulas.mul_rn, add_rn, sub_rn as libdevice's correctly rounded, never-fused operations
    (the simulator runs formulas' plain Python instead)."""
    from numba.core import types
    from numba.core.extending import overload
    from numba.cuda import libdevice

    def rounded(rule, f32, f64):
        @overload(rule, target="cuda")
        def typer(a, b):  # pragma: no cover - typing
            if a == types.float32 and b == types.float32:
                return f32
            if a == types.float64 and b == types.float64:
                return f64
            return None

    ld = libdevice
    rounded(formulas.mul_rn, lambda a, b: ld.fmul_rn(a, b), lambda a, b: ld.dmul_rn(a, b))
    rounded(formulas.add_rn, lambda a, b: ld.fadd_rn(a, b), lambda a, b: ld.dadd_rn(a, b))
    rounded(formulas.sub_rn, lambda a, b: ld.fsub_rn(a, b), lambda a, b: ld.dadd_rn(a, -b))


if not numba.config.ENABLE_CUDASIM:
    _register_rounded_operations()

_normalize = cuda.jit(device=True)(formulas.normalize_element)
_rows = cuda.jit(device=True)(formulas.batch_rows)
_advance = cuda.jit(device=True)(formulas.batch_advance)
_key = cuda.jit(device=True)(formulas.augment_key)
_draw = cuda.jit(device=True)(formulas.dropout_draw)
_unit = cuda.jit(device=True)(formulas.unit_uniform)
_symmetric = cuda.jit(device=True)(formulas.symmetric_uniform)
_affine = cuda.jit(device=True)(formulas.affine_element)


@cuda.jit(cache=True)
def gather_batch_kernel(
    images, labels, perm, state, batch_size, scale, mean, inv_std, zero, out_x, out_y
):  # pragma: no cover - compiled
    # one thread per output element; images (N, P) uint8 and out_x (R, P): the flat views
    n, per = images.shape
    rows = out_x.shape[0]
    first = state[BATCH_STEP] * batch_size
    count = _rows(first, batch_size, perm.shape[0], rows)
    start, step = cuda.grid(1), cuda.gridsize(1)
    if start == 0:
        state[BATCH_ROWS] = count  # no thread reads this slot
    for e in range(start, rows * per, step):
        r = e // per
        k = e - r * per
        src = perm[first + r] if r < count else -1
        ok = src >= 0 and src < n  # past the permutation's end, or not an image index: empty
        out_x[r, k] = _normalize(images[src, k], scale, mean, inv_std) if ok else zero
        if k == 0:
            out_y[r] = labels[src] if ok else -1


@cuda.jit(cache=True)
def batch_state_advance_kernel(state):  # pragma: no cover - one thread
    if cuda.grid(1) == 0:
        _advance(state)


@cuda.jit(cache=True)
def record_step_kernel(values, state, value):  # pragma: no cover - one thread
    if cuda.grid(1) == 0:
        s = state[BATCH_STEP]
        if s >= 0 and s < values.shape[0]:  # a replay past the epoch's end writes nothing
            values[s] = value[0]


@cuda.jit(cache=True)
def affine_params_kernel(
    state, seed, angle, max_tx, max_ty, lo, width, flip_threshold, inv, shift
):  # pragma: no cover - compiled
    key = _key(seed, np.uint64(state[BATCH_EPOCH]), np.uint64(state[BATCH_STEP]))
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, inv.shape[0], step):
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
    images: Any,
    labels: Any,
    perm: Any,
    state: Any,
    batch_size: int,
    mean: float,
    std: float,
    out_x: Any,
    out_y: Any,
) -> None:
    """Gather and normalise batch number state[BATCH_STEP] of ``perm`` into out_x, out_y; see
    the CPU twin. Shape: images uint8 (N, C, H, W), labels int64 (N,), perm int64 (P,), state
    int64 (BATCH_STATE_SIZE,) -> out_x float32 (R, C, H, W), out_y int64 (R,), 1 <= R <= B."""
    formulas.check_gather(images, labels, perm, batch_size, out_x, out_y)
    formulas.check_state("gather_batch", state, np.int64, BATCH_STATE_SIZE)
    n, rows = images.shape[0], out_x.shape[0]
    per = out_x.size // rows
    gather_batch_kernel[config(out_x.size)](
        images.reshape(n, per),
        labels,
        perm,
        state,
        batch_size,
        *formulas.normalize_constants(mean, std),
        np.float32(0),
        out_x.reshape(rows, per),
        out_y,
    )


def batch_state_advance(state: Any) -> None:
    """Move a batch state on to the next batch (one thread, once per training step, after the
    step's last gather_batch and affine_params)."""
    formulas.check_state("batch_state_advance", state, np.int64, BATCH_STATE_SIZE)
    batch_state_advance_kernel[1, 1, stream()](state)


def record_step(values: Any, state: Any, value: Any) -> None:
    """values[state[BATCH_STEP]] = value, on the device (one thread; nothing when the step is
    past the end of ``values``): a captured step records its loss and gradient norm in a
    per-epoch array the host reads once. Shape: values (S,), state int64 (BATCH_STATE_SIZE,),
    value one element (0-d or (1,)) of values' dtype."""
    formulas.check_state("record_step", state, np.int64, BATCH_STATE_SIZE)
    _check_record(values, value)
    record_step_kernel[1, 1, stream()](values, state, value.reshape(1))


def _check_record(values: Any, value: Any) -> None:
    if values.ndim != 1 or not values.flags.c_contiguous:
        raise ValueError(
            f"record_step: expected a C-contiguous 1-D values array, got {tuple(values.shape)}"
        )
    if value.size != 1 or value.dtype != values.dtype:
        raise ValueError(
            f"record_step: expected one value of values' dtype {values.dtype}, got "
            f"{tuple(value.shape)} {value.dtype}"
        )


def affine_params(
    state: Any,
    seed: int,
    shape: tuple[int, ...],
    degrees: float,
    translate: tuple[float, float],
    scale: tuple[float, float],
    flip: float,
    out_inv: Any,
    out_shift: Any,
) -> None:
    """Draw each image's affine_warp parameters for batch state[BATCH_STEP] of epoch
    state[BATCH_EPOCH] on the device (one thread per image); see the CPU twin.
    Shape: ``shape`` is the batch's (N, C, H, W) -> out_inv float32 (N, 4), out_shift (N, 2)."""
    angle, max_tx, max_ty, lo, width, threshold = formulas.affine_constants(
        shape, degrees, translate, scale, flip
    )
    formulas.check_affine_out(shape, out_inv, out_shift)
    formulas.check_state("affine_params", state, np.int64, BATCH_STATE_SIZE)
    affine_params_kernel[config(shape[0])](
        state, np.uint64(seed), angle, max_tx, max_ty, lo, width, threshold, out_inv, out_shift
    )
