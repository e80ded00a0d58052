"""Optimizer updates as one fused pass over each parameter (the CUDA twins are in cuda/optim.py).

Written as NumPy expressions, an Adam step makes about a dozen passes over every parameter and
allocates a temporary for each; here each element is read and written once. Every constant
arrives as a scalar of the parameter's dtype, so float32 parameters are updated in float32.
The per-element rules are gpucnn.backend.formulas, shared with the CUDA kernels.

The ``*_state`` twins read their step's constants from a step-state array (formulas.STATE_SIZE)
that ``optim_state_advance`` moves on once per step, as the CUDA kernels read theirs from
device memory (for a step replayed from a CUDA graph); the arithmetic is the host path's.
"""

from __future__ import annotations

import numba
import numpy as np

from gpucnn.backend import formulas
from gpucnn.backend.cpu import threads

_adam_element = numba.njit(inline="always", error_model="numpy")(formulas.adam_element)
_sgd_element = numba.njit(inline="always", error_model="numpy")(formulas.sgd_element)
_advance = numba.njit(inline="always", error_model="numpy")(formulas.optim_advance)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _adam(
    w, g, m, v, vmax, amsgrad, step_size, b1c, b2, b2c, sqrt_bc2, eps, wd, lo, hi
):  # pragma: no cover
    for e in range(lo, hi):
        vm = vmax[e] if amsgrad else v[e]  # without amsgrad, vmax is a 1-element stand-in
        w[e], m[e], v[e], vm = _adam_element(
            w[e], g[e], m[e], v[e], vm, amsgrad, step_size, b1c, b2, b2c, sqrt_bc2, eps, wd
        )
        if amsgrad:
            vmax[e] = vm


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sgd(w, g, buf, first, lr, momentum, damp_c, wd, nesterov, lo, hi):  # pragma: no cover
    for e in range(lo, hi):
        b = buf[e] if momentum != 0 else g[e]  # without momentum, buf is a 1-element stand-in
        w[e], b = _sgd_element(w[e], g[e], b, first, lr, momentum, damp_c, wd, nesterov)
        if momentum != 0:
            buf[e] = b


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _optim_advance(state, c64, c32):  # pragma: no cover - compiled
    _advance(state, c64, c32)


def adam_update(w, g, m, v, vmax, *, step_size, beta1, beta2, bias_correction2, eps, weight_decay):
    """One Adam step for one parameter, in place (AMSGrad when ``vmax`` is an array).

    ``w``, ``m``, ``v`` (and ``vmax``) are updated; ``g`` is read. ``step_size`` is
    lr / (1 - beta1^t) and ``bias_correction2`` is 1 - beta2^t.
    """
    amsgrad = vmax is not None
    formulas.check_same_layout("adam_update", w, g, m, v, *([vmax] if amsgrad else []))
    consts = formulas.adam_constants(
        w.dtype, step_size, beta1, beta2, bias_correction2, eps, weight_decay
    )
    stand_in = np.empty(1, dtype=w.dtype)  # never read or written
    flat = [a.reshape(-1) for a in (w, g, m, v, vmax if amsgrad else stand_in)]
    threads.split(_adam, w.size, *flat, amsgrad, *consts, grain=threads.GRAIN)


def sgd_update(w, g, buf, *, first, lr, momentum, dampening, weight_decay, nesterov):
    """One SGD step for one parameter, in place. ``buf`` is the momentum buffer (None without
    momentum); ``first`` says it is empty, and it is then set to the gradient."""
    formulas.check_same_layout("sgd_update", w, g, *([buf] if buf is not None else []))
    consts = formulas.sgd_constants(w.dtype, lr, momentum, dampening, weight_decay)
    stand_in = np.empty(1, dtype=w.dtype)  # never read or written
    flat = [a.reshape(-1) for a in (w, g, buf if buf is not None else stand_in)]
    threads.split(_sgd, w.size, *flat, first, *consts, nesterov, grain=threads.GRAIN)


def optim_state_advance(state):
    """Start an optimizer step: the step count of ``state`` (a step-state array,
    formulas.step_state) goes up by one and the step's constants (bias corrections included) are
    computed from it and the hyperparameters, in float64 as the host path computes them."""
    formulas.check_state("optim_state_advance", state, np.float64, formulas.STATE_SIZE)
    _optim_advance(state, *formulas.constant_blocks(state))


def adam_update_state(w, g, m, v, vmax, state):
    """adam_update with the step's constants read from ``state`` (after optim_state_advance)
    instead of passed: the same arithmetic, the same bits."""
    amsgrad = vmax is not None
    formulas.check_same_layout("adam_update_state", w, g, m, v, *([vmax] if amsgrad else []))
    formulas.check_state("adam_update_state", state, np.float64, formulas.STATE_SIZE)
    c = formulas.step_constants(state, w.dtype)
    flat = [a.reshape(-1) for a in (w, g, m, v, vmax if amsgrad else g)]  # g: never read there
    consts = c[formulas.K_STEP_SIZE : formulas.K_WD + 1]
    threads.split(_adam, w.size, *flat, amsgrad, *consts, grain=threads.GRAIN)


def sgd_update_state(w, g, buf, state):
    """sgd_update with lr, momentum, dampening, weight decay, nesterov and the first-step flag
    read from ``state`` (after optim_state_advance); ``buf`` None means no momentum."""
    formulas.check_same_layout("sgd_update_state", w, g, *([buf] if buf is not None else []))
    formulas.check_state("sgd_update_state", state, np.float64, formulas.STATE_SIZE)
    c = formulas.step_constants(state, w.dtype)
    zero = w.dtype.type(0)
    momentum = c[formulas.K_MOMENTUM] if buf is not None else zero
    flat = [a.reshape(-1) for a in (w, g, buf if buf is not None else g)]  # g: never written
    consts = (
        bool(c[formulas.K_FIRST] != zero),
        c[formulas.K_LR],
        momentum,
        c[formulas.K_DAMP_C],
        c[formulas.K_WD],
        bool(c[formulas.K_NESTEROV] != zero),
    )
    threads.split(_sgd, w.size, *flat, *consts, grain=threads.GRAIN)
