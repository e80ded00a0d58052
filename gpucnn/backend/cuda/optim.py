"""Fused optimizer updates on the GPU: one launch per parameter does the whole step.

The per-element rules are gpucnn.backend.formulas, the same source the CPU kernels compile;
one thread per element (grid stride). Every constant arrives as a scalar of the parameter's
dtype: no float64 literal.
"""

from __future__ import annotations

from gpucnn.backend import formulas
from gpucnn.backend.cuda.launch import THREADS, array_module, blocks
from gpucnn.backend.numba_cuda import cuda

_adam_element = cuda.jit(device=True)(formulas.adam_element)
_sgd_element = cuda.jit(device=True)(formulas.sgd_element)


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


def adam_update(w, g, m, v, vmax, *, step_size, beta1, beta2, bias_correction2, eps, weight_decay):
    """One Adam step for one parameter in one launch, in place (AMSGrad when ``vmax`` is given)."""
    amsgrad = vmax is not None
    formulas.check_same_layout("adam_update", w, g, m, v, *([vmax] if amsgrad else []))
    consts = formulas.adam_constants(
        w.dtype, step_size, beta1, beta2, bias_correction2, eps, weight_decay
    )
    stand_in = array_module(w).empty(1, dtype=w.dtype)  # never read or written
    flat = [a.reshape(-1) for a in (w, g, m, v, vmax if amsgrad else stand_in)]
    adam_update_kernel[blocks(w.size), THREADS](*flat, amsgrad, *consts)


def sgd_update(w, g, buf, *, first, lr, momentum, dampening, weight_decay, nesterov):
    """One SGD step for one parameter in one launch, in place (``buf``: momentum buffer or None)."""
    formulas.check_same_layout("sgd_update", w, g, *([buf] if buf is not None else []))
    consts = formulas.sgd_constants(w.dtype, lr, momentum, dampening, weight_decay)
    stand_in = array_module(w).empty(1, dtype=w.dtype)  # never read or written
    flat = [a.reshape(-1) for a in (w, g, buf if buf is not None else stand_in)]
    sgd_update_kernel[blocks(w.size), THREADS](*flat, first, *consts, nesterov)
