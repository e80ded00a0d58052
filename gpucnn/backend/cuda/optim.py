"""Fused optimizer updates on the GPU: one launch per parameter does the whole step.

The per-element rules are gpucnn.backend.formulas, the same source the CPU kernels compile;
one thread per element (grid stride). Every constant arrives as a scalar of the parameter's
dtype: no float64 literal.
"""

from __future__ import annotations

from numba import cuda

from gpucnn.backend import formulas

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
