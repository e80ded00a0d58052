"""Every CUDA kernel, compiled for float32 data, computes in float32: its PTX holds no f64
instruction. A float64 slips in silently (an int meeting a float, a bare literal in an
expression Numba types as float64), runs correctly in the simulator, and costs a GPU 2-64x.

The launchers are called with small float32 NumPy arrays while their kernels are swapped for
recorders, which keep each kernel's Python function and the Numba types of its arguments; the
test then compiles each to PTX for an sm_90 GPU (libnvvm does not need a GPU to do that).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("the simulator does not compile kernels", allow_module_level=True)

numba = pytest.importorskip("numba")
from numba import cuda  # noqa: E402

import gpucnn.backend.cuda as gpu  # noqa: E402
from gpucnn.backend import formulas  # noqa: E402


def _nvvm_missing() -> str | None:
    def probe(x):  # pragma: no cover - compiled
        x[0] = 1

    try:
        cuda.compile_ptx(probe, (numba.float32[:],), cc=(9, 0))
    except Exception as exc:  # NvvmSupportError, a missing libnvvm, an old CUDA toolkit
        return f"{type(exc).__name__}: {exc}"
    return None


MISSING = _nvvm_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"cannot compile PTX: {MISSING}")

KERNEL_MODULES = gpu.KERNEL_MODULES

# Kernels that compute in float64 by design, and why (each runs one thread once per step).
FLOAT64_BY_DESIGN = {
    "optim_state_advance_kernel": "the step's constants from the float64 expressions of the "
    "host path, so the float32 update kernels read the bits the host path would pass",
}


def _every_launch() -> None:
    """Call every launcher once on float32 arrays (the kernels are recorders by now)."""
    g = np.random.default_rng(0)
    f32 = lambda *shape: g.standard_normal(shape).astype(np.float32)  # noqa: E731
    x = f32(2, 3, 6, 6)
    cols = gpu.im2col(x, 3, 1, 1)
    gpu.col2im(f32(27, 72), x.shape, 3, 1, 1)
    y = gpu.conv2d_direct_fwd(x, f32(4, 3, 3, 3), f32(4), 1, 1)  # 27 taps, without columns
    gpu.conv2d_direct_bwd(y, x, 3, 1, 1)
    arg = np.zeros((2, 3, 3, 3), np.int32)
    for k, s, p in ((2, 2, 0), (3, 2, 1)):  # windows apart (and 2x2), then overlapping
        gpu.maxpool2d_fwd(x, k, s, p)
        gpu.maxpool2d_bwd(f32(2, 3, 3, 3), arg, x.shape, k, s, p)
        gpu.avgpool2d_fwd(x, k, s, p)
        gpu.avgpool2d_bwd(f32(2, 3, 3, 3), x.shape, k, s, p)
    gpu.affine_warp(x, f32(2, 4), f32(2, 2))
    y, arg = gpu.conv_relu_pool2x2_fwd(f32(3, 2, 6, 5), f32(3))  # the fused conv epilogue
    gpu.conv_relu_pool2x2_bwd(f32(2, 3, 3, 2), arg, y, (6, 5))
    _, arg = gpu.global_maxpool2d_fwd(x)
    gpu.global_maxpool2d_bwd(f32(2, 3), arg, x.shape)
    gpu.relu_fwd(x)
    gpu.relu_bwd(x, x)
    gpu.dropout_fwd(x, 0.5, 123)
    gpu.softmax_xent_fwd(f32(4, 10), np.arange(4))
    c = np.ones(3, np.float32)
    gpu.batchnorm2d_fwd(x, c, c, c.copy(), c.copy(), True, 0.1, 1e-5)
    gpu.batchnorm2d_bwd(x, (x, c, c), c, True)
    w = f32(5, 7)
    gpu.adam_update(w, w.copy(), w.copy(), np.abs(w), np.abs(w), step_size=1e-3, beta1=0.9,
                    beta2=0.999, bias_correction2=0.5, eps=1e-8, weight_decay=1e-4)  # fmt: skip
    gpu.sgd_update(w, w.copy(), w.copy(), first=False, lr=0.1, momentum=0.9, dampening=0.0,
                   weight_decay=1e-4, nesterov=True)  # fmt: skip
    state = formulas.step_state(3, 1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-4,
                                momentum=0.9, nesterov=True)  # fmt: skip
    gpu.optim_state_advance(state)
    gpu.adam_update_state(w, w.copy(), w.copy(), np.abs(w), np.abs(w), state)
    gpu.sgd_update_state(w, w.copy(), w.copy(), state)
    keys = formulas.dropout_state(123, 4)
    gpu.dropout_fwd_state(x, 0.5, keys)
    gpu.dropout_state_advance(keys)
    gpu.gemm(f32(4, 3), f32(4, 5), f32(3, 5), trans_a=True, alpha=2.0, beta=0.5)  # one pass
    ws = np.empty(gpu.gemm_workspace_size(5, 6, 700), np.float32)  # split-K, then the reduce
    gpu.gemm(f32(5, 700), f32(6, 700), f32(5, 6), trans_b=True, beta=1.0, workspace=ws)
    batch = formulas.batch_state(epoch=1, step=2)
    images = np.zeros((9, 1, 5, 6), np.uint8)
    gpu.gather_batch(images, np.arange(9), np.arange(9), batch, 4, 0.1, 0.3, f32(2, 1, 5, 6),
                     np.zeros(2, np.int64))  # fmt: skip
    gpu.affine_params(batch, 7, x.shape, 10.0, (0.1, 0.1), (0.9, 1.1), 0.5, f32(2, 4), f32(2, 2))
    gpu.record_step(f32(3), batch, f32(1))
    gpu.batch_state_advance(batch)
    v = gpu.winograd_input_tf(x, 2, 1)  # F(2x2, 3x3): (16, 2*3*3 tiles, 3 channels)
    mt = f32(16, 18, 4)
    gpu.winograd_output_tf(mt, f32(4), (2, 4, 6, 6), 2)
    y, arg = gpu.winograd_relu_pool2x2_fwd(mt, f32(4), (2, 4, 6, 6), 2)
    gpu.winograd_grad_tf(f32(2, 4, 6, 6), 2)
    gpu.winograd_relu_pool2x2_bwd(f32(2, 4, 3, 3), arg, y, (6, 6), 2)
    gpu.winograd_input_grad(v, x.shape, 2, 1)
    assert cols.shape == (27, 72)


def _recorded_launches(monkeypatch) -> dict[str, tuple]:
    seen: dict[str, tuple] = {}

    class Recorder:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, config):
            def launch(*args):
                seen[self.name] = (self.kernel.py_func, tuple(numba.typeof(a) for a in args))

            return launch

    for module in KERNEL_MODULES:
        for name in dir(module):
            if name.endswith("_kernel"):
                monkeypatch.setattr(module, name, Recorder(name, getattr(module, name)))
    # the launchers allocate real outputs, so the im2col result above is a NumPy array
    monkeypatch.setattr(gpu, "im2col", _im2col_shape_only(gpu.im2col))
    # recorders compute nothing: the kernel paths' self-checks would switch every path off
    monkeypatch.setattr(gpu.selfcheck, "run", lambda path, shape, fast, *args, **kw: fast())
    _every_launch()
    return seen


def _im2col_shape_only(im2col):
    def wrapped(x, k, stride, pad, pad_value=0.0):
        return im2col(x, k, stride, pad, pad_value)

    return wrapped


def test_every_kernel_is_recorded_once(monkeypatch):
    seen = _recorded_launches(monkeypatch)
    defined = {n for m in KERNEL_MODULES for n in dir(m) if n.endswith("_kernel")}
    assert set(seen) == defined, f"launchers never called: {sorted(defined - set(seen))}"


class _Hopper:
    compute_capability = (9, 0)


def test_float32_kernels_compile_to_ptx_without_float64(monkeypatch):
    # device functions compile for "the current device"; there is none here, so say sm_90
    monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device", lambda: _Hopper())
    promoted = []
    for name, (func, types) in sorted(_recorded_launches(monkeypatch).items()):
        ptx, _ = cuda.compile_ptx(func, types, cc=(9, 0))
        f64 = [line.strip() for line in ptx.splitlines() if ".f64" in line]
        if f64 and name not in FLOAT64_BY_DESIGN:
            promoted.append(f"{name}: {f64[:3]}")
    assert not promoted, "float64 in float32 kernels:\n" + "\n".join(promoted)


def test_the_float64_exceptions_are_kernels_that_exist():
    defined = {n for m in KERNEL_MODULES for n in dir(m) if n.endswith("_kernel")}
    assert set(FLOAT64_BY_DESIGN) <= defined


def test_the_check_sees_a_promotion():
    def halve(x, m):  # pragma: no cover - compiled; an int64 divisor makes the division f64
        i = cuda.grid(1)
        if i < x.size:
            x[i] = x[i] / m

    ptx, _ = cuda.compile_ptx(halve, (numba.float32[:], numba.int64), cc=(9, 0))
    assert ".f64" in ptx
