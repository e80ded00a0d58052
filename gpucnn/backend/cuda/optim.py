"""Fused optimizer updates on the GPU: one launch per parameter does the whole step.

The per-element rules are gpucnn.backend.formulas, the same source the CPU kernels compile;
one thread per element (grid stride). Every constant arrives as a scalar of the parameter's
dtype: no float64 literal.

Two ways to get the step's constants. ``adam_update`` and ``sgd_update`` take them as launch
arguments (computed on the host each step). The ``*_state`` launchers read them from a
step-state array in device memory (formulas.STATE_SIZE), which ``optim_state_advance`` (one
thread, once per step, before the updates) moves on: step count, bias corrections and
learning rate then never travel as launch arguments, so a step captured into a CUDA graph
replays correctly, and the learning rate is changed by writing the array. The advance kernel
computes in float64 on purpose (the host path's expressions, so the update kernels read the
float32 constants the host path would pass); the update kernels stay float32.
"""

from __future__ import annotations

import numpy as np

from gpucnn.backend import formulas
from gpucnn.backend.cuda.launch import array_module, config, stream
from gpucnn.backend.formulas import (
    K_B1C,
    K_B2,
    K_B2C,
    K_DAMP_C,
    K_EPS,
    K_FIRST,
    K_LR,
    K_MOMENTUM,
    K_NESTEROV,
    K_SQRT_BC2,
    K_STEP_SIZE,
    K_WD,
    STATE_SIZE,
)
from gpucnn.backend.numba_cuda import cuda

_adam_element = cuda.jit(device=True)(formulas.adam_element)
_sgd_element = cuda.jit(device=True)(formulas.sgd_element)
_advance = cuda.jit(device=True)(formulas.optim_advance)


@cuda.jit(cache=True)
def adam_update_kernel(
    w, g, m, v, vmax, amsgrad, step_size, b1c, b2, b2c, sqrt_bc2, eps, wd
):  # pragma: no cover
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, w.size, step):
        vm = vmax[e] if amsgrad else v[e]  # without amsgrad, vmax is a 1-element stand-in
        w[e], m[e], v[e], vm = _adam_element(
            w[e], g[e], m[e], v[e], vm, amsgrad, step_size, b1c, b2, b2c, sqrt_bc2, eps, wd
        )
        if amsgrad:
            vmax[e] = vm


@cuda.jit(cache=True)
def sgd_update_kernel(w, g, buf, first, lr, momentum, damp_c, wd, nesterov):  # pragma: no cover
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, w.size, step):
        b = buf[e] if momentum != 0 else g[e]  # without momentum, buf is a 1-element stand-in
        w[e], b = _sgd_element(w[e], g[e], b, first, lr, momentum, damp_c, wd, nesterov)
        if momentum != 0:
            buf[e] = b


@cuda.jit(cache=True)
def optim_state_advance_kernel(state, c64, c32):  # pragma: no cover - one thread
    if cuda.grid(1) == 0:
        _advance(state, c64, c32)


@cuda.jit(cache=True)
def adam_update_state_kernel(w, g, m, v, vmax, amsgrad, c):  # pragma: no cover
    step_size, b1c, b2, b2c = c[K_STEP_SIZE], c[K_B1C], c[K_B2], c[K_B2C]
    sqrt_bc2, eps, wd = c[K_SQRT_BC2], c[K_EPS], c[K_WD]
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, w.size, step):
        vm = vmax[e] if amsgrad else v[e]  # without amsgrad, vmax is g (never read)
        w[e], m[e], v[e], vm = _adam_element(
            w[e], g[e], m[e], v[e], vm, amsgrad, step_size, b1c, b2, b2c, sqrt_bc2, eps, wd
        )
        if amsgrad:
            vmax[e] = vm


@cuda.jit(cache=True)
def sgd_update_state_kernel(w, g, buf, has_buf, c, zero):  # pragma: no cover
    lr, damp_c, wd = c[K_LR], c[K_DAMP_C], c[K_WD]
    momentum = c[K_MOMENTUM] if has_buf else zero
    first = c[K_FIRST] != zero
    nesterov = c[K_NESTEROV] != zero
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, w.size, step):
        b = buf[e] if momentum != 0 else g[e]  # without momentum, buf is g (never written)
        w[e], b = _sgd_element(w[e], g[e], b, first, lr, momentum, damp_c, wd, nesterov)
        if momentum != 0:
            buf[e] = b


def adam_update(w, g, m, v, vmax, *, step_size, beta1, beta2, bias_correction2, eps, weight_decay):
    """One Adam step for one parameter in one launch, in place (AMSGrad when ``vmax`` is given)."""
    amsgrad = vmax is not None
    formulas.check_same_layout("adam_update", w, g, m, v, *([vmax] if amsgrad else []))
    consts = formulas.adam_constants(
        w.dtype, step_size, beta1, beta2, bias_correction2, eps, weight_decay
    )
    stand_in = array_module(w).empty(1, dtype=w.dtype)  # never read or written
    flat = [a.reshape(-1) for a in (w, g, m, v, vmax if amsgrad else stand_in)]
    adam_update_kernel[config(w.size)](*flat, amsgrad, *consts)


def sgd_update(w, g, buf, *, first, lr, momentum, dampening, weight_decay, nesterov):
    """One SGD step for one parameter in one launch, in place (``buf``: momentum buffer or None)."""
    formulas.check_same_layout("sgd_update", w, g, *([buf] if buf is not None else []))
    consts = formulas.sgd_constants(w.dtype, lr, momentum, dampening, weight_decay)
    stand_in = array_module(w).empty(1, dtype=w.dtype)  # never read or written
    flat = [a.reshape(-1) for a in (w, g, buf if buf is not None else stand_in)]
    sgd_update_kernel[config(w.size)](*flat, first, *consts, nesterov)


def optim_state_advance(state):
    """Start an optimizer step on the device (one thread): the step count of ``state`` goes up
    by one and the step's constants are computed from it and the hyperparameters."""
    formulas.check_state("optim_state_advance", state, np.float64, STATE_SIZE)
    optim_state_advance_kernel[1, 1, stream()](state, *formulas.constant_blocks(state))


def adam_update_state(w, g, m, v, vmax, state):
    """adam_update with the step's constants read from ``state`` on the device (after
    optim_state_advance): no per-step launch argument, no allocation."""
    amsgrad = vmax is not None
    formulas.check_same_layout("adam_update_state", w, g, m, v, *([vmax] if amsgrad else []))
    formulas.check_state("adam_update_state", state, np.float64, STATE_SIZE)
    # without amsgrad, g stands in for vmax (never read there): no allocation. Not an array
    # the kernel writes: the simulator copies each argument back after the launch
    flat = [a.reshape(-1) for a in (w, g, m, v, vmax if amsgrad else g)]
    adam_update_state_kernel[config(w.size)](
        *flat, amsgrad, formulas.step_constants(state, w.dtype)
    )


def sgd_update_state(w, g, buf, state):
    """sgd_update with its constants read from ``state`` on the device (after
    optim_state_advance); ``buf`` None means no momentum."""
    formulas.check_same_layout("sgd_update_state", w, g, *([buf] if buf is not None else []))
    formulas.check_state("sgd_update_state", state, np.float64, STATE_SIZE)
    has_buf = buf is not None
    flat = [a.reshape(-1) for a in (w, g, buf if has_buf else g)]
    sgd_update_state_kernel[config(w.size)](
        *flat, has_buf, formulas.step_constants(state, w.dtype), w.dtype.type(0)
    )
