"""Optimizer updates as one fused pass over each parameter (the CUDA twins are in cuda/optim.py).

Written as NumPy expressions, an Adam step makes about a dozen passes over every parameter and
allocates a temporary for each; here each element is read and written once. Every constant
arrives as a scalar of the parameter's dtype, so float32 parameters are updated in float32.
The per-element rules are gpucnn.backend.formulas, shared with the CUDA kernels.
"""

from __future__ import annotations

import numba
import numpy as np

from gpucnn.backend import formulas

_adam_element = numba.njit(inline="always", error_model="numpy")(formulas.adam_element)
_sgd_element = numba.njit(inline="always", error_model="numpy")(formulas.sgd_element)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _adam(
    w, g, m, v, vmax, amsgrad, step_size, b1c, b2, b2c, sqrt_bc2, eps, wd
):  # pragma: no cover
    for e in range(w.size):
        vm = vmax[e] if amsgrad else v[e]  # without amsgrad, vmax is a 1-element stand-in
        w[e], m[e], v[e], vm = _adam_element(
            w[e], g[e], m[e], v[e], vm, amsgrad, step_size, b1c, b2, b2c, sqrt_bc2, eps, wd
        )
        if amsgrad:
            vmax[e] = vm


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sgd(w, g, buf, first, lr, momentum, damp_c, wd, nesterov):  # pragma: no cover - compiled
    for e in range(w.size):
        b = buf[e] if momentum != 0 else g[e]  # without momentum, buf is a 1-element stand-in
        w[e], b = _sgd_element(w[e], g[e], b, first, lr, momentum, damp_c, wd, nesterov)
        if momentum != 0:
            buf[e] = b


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
    _adam(*flat, amsgrad, *consts)


def sgd_update(w, g, buf, *, first, lr, momentum, dampening, weight_decay, nesterov):
    """One SGD step for one parameter, in place. ``buf`` is the momentum buffer (None without
    momentum); ``first`` says it is empty, and it is then set to the gradient."""
    formulas.check_same_layout("sgd_update", w, g, *([buf] if buf is not None else []))
    consts = formulas.sgd_constants(w.dtype, lr, momentum, dampening, weight_decay)
    stand_in = np.empty(1, dtype=w.dtype)  # never read or written
    flat = [a.reshape(-1) for a in (w, g, buf if buf is not None else stand_in)]
    _sgd(*flat, first, *consts, nesterov)
