"""The kernel paths check themselves (gpucnn.backend.cuda.selfcheck): the GEMM kernels against
cuBLAS, the direct convolution against im2col + cuBLAS, the fused conv epilogue against the
layers' kernels one by one, once per (path, shape, device). A kernel made wrong here (it runs,
then adds 1 to its output: what a miscompiled or mis-indexed kernel looks like from outside)
is caught on first use, logged in one line and switched off, and the launcher's result is the
reference's; inside a capture a switched-off path computes through capturable kernels, or,
for the GEMM kernels, whose reference a capture refuses, fails the capture."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from gpucnn.backend import cpu, get_backend, to_host
from gpucnn.backend import cuda as gpu
from gpucnn.backend.cuda import direct, fused, selfcheck
from gpucnn.backend.cuda import gemm_module as gm
from tests.backend.sim.faults import Corrupt, Counting

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def _data(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "gpucnn.backend"]


@pytest.fixture
def backend():
    return get_backend("cuda")


def test_the_gemm_kernels_are_checked_once_per_shape_against_cublas(backend, kernel_checks):
    a, b, c = _data(3, 5), _data(5, 4, seed=1), _data(6, 5, seed=2)
    da, db, dc = backend.asarray(a), backend.asarray(b), backend.asarray(c)
    gpu.matmul(da, db)  # not capturable: cuBLAS, nothing to check
    assert kernel_checks.verdicts() == []
    with backend.capturable():
        first, again = gpu.matmul(da, db), gpu.matmul(da, db)
        other = gpu.matmul(da, dc.T)  # an F-contiguous operand, read in place
    np.testing.assert_allclose(to_host(first), a @ b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_host(again), a @ b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_host(other), a @ c.T, rtol=1e-5, atol=1e-6)
    verdicts = kernel_checks.verdicts()
    assert [v.shape for v in verdicts] == [(3, 4, 5, "C", "C", "<f4"), (3, 6, 5, "C", "F", "<f4")]
    assert all(v.ok and v.path == "gemm" and v.device == 0 for v in verdicts)
    assert max(v.error for v in verdicts) < 1e-6
    assert kernel_checks.reads == 2  # one device read per check, none for the second call


def test_a_gemm_kernel_that_disagrees_is_switched_off_in_one_line(
    backend, kernel_checks, expect_mismatch, monkeypatch, caplog
):
    wrong = Corrupt(gm.gemm_tile_kernel)
    monkeypatch.setattr(gm, "gemm_tile_kernel", wrong)
    a, b, c = _data(3, 5), _data(5, 4, seed=1), _data(5, 7, seed=2)
    da, db, dc = backend.asarray(a), backend.asarray(b), backend.asarray(c)
    with caplog.at_level(logging.DEBUG, logger="gpucnn.backend"), backend.capturable():
        got = gpu.matmul(da, db)  # checked: it disagrees, and the result is cuBLAS's
        later = gpu.matmul(da, dc)  # the path is off on this device: cuBLAS, no kernel
    np.testing.assert_allclose(to_host(got), a @ b, rtol=1e-6)
    np.testing.assert_allclose(to_host(later), a @ c, rtol=1e-6)
    assert wrong.launches == 1 and kernel_checks.reads == 1
    (line,) = _lines(caplog)
    assert line.startswith(
        "the GEMM kernels (cuda/gemm.py) disagree with cuBLAS on device 0 at gemm 3 4 5 C C <f4: "
        "the product differs by"
    )
    assert "(tolerance 1e-04); gemm is switched off on this device for this process" in line
    assert selfcheck.why_off("gemm") == line
    # inside a capture cuBLAS is refused: the capture fails, saying why
    with pytest.raises(selfcheck.KernelPathOff, match="disagree with cuBLAS"):
        with backend.capture():
            gpu.matmul(da, db)
    assert not backend.stream.is_capturing()


def test_a_shape_first_met_inside_a_capture_is_refused(backend):
    da, db = backend.asarray(_data(2, 3)), backend.asarray(_data(3, 2, seed=1))
    with pytest.raises(selfcheck.KernelPathOff, match="were not checked .* before this capture"):
        with backend.capture():
            gpu.matmul(da, db)


def test_a_direct_conv_that_disagrees_falls_back_to_im2col(
    backend, kernel_checks, expect_mismatch, monkeypatch, caplog
):
    monkeypatch.setattr(direct, "direct_fwd_kernel", Corrupt(direct.direct_fwd_kernel))
    bwd = Counting(direct.direct_bwd_kernel)
    monkeypatch.setattr(direct, "direct_bwd_kernel", bwd)
    x, w, b = _data(2, 1, 5, 6), _data(3, 1, 3, 3, seed=1), _data(3, seed=2)
    dx, dw, db = (backend.asarray(v) for v in (x, w, b))
    with caplog.at_level(logging.WARNING, logger="gpucnn.backend"):
        y = gpu.conv2d_direct_fwd(dx, dw, db, 1, 1)
    np.testing.assert_allclose(to_host(y), cpu.conv2d_direct_fwd(x, w, b, 1, 1), atol=1e-5)
    (line,) = _lines(caplog)
    assert "the direct convolution kernels (cuda/direct.py) disagree with im2col + cuBLAS" in line
    assert "at direct fwd (2, 1, 5, 6) (3, 1, 3, 3) 1 1 <f4: y differs by" in line
    dy = _data(2, 3, 5, 6, seed=3)
    grads = gpu.conv2d_direct_bwd(backend.asarray(dy), dx, 3, 1, 1)
    for got, want in zip(grads, cpu.conv2d_direct_bwd(dy, x, 3, 1, 1), strict=True):
        np.testing.assert_allclose(to_host(got), want, rtol=1e-5, atol=1e-5)
    assert bwd.launches == 0  # the path is off on this device: the backward did not run it
    # inside a capture the switched-off path runs im2col and the GEMM kernels (checked in the
    # warm-up, as a captured step's first step does)
    with backend.capturable():
        gpu.conv2d_direct_fwd(dx, dw, db, 1, 1)
    with backend.capture() as capture:
        y = gpu.conv2d_direct_fwd(dx, dw, db, 1, 1)
    capture.graph.launch(backend.stream)
    np.testing.assert_allclose(to_host(y), cpu.conv2d_direct_fwd(x, w, b, 1, 1), atol=1e-5)
    assert len(_lines(caplog)) == 1


def test_a_fused_epilogue_that_disagrees_falls_back_to_the_layers_kernels(
    backend, kernel_checks, expect_mismatch, monkeypatch, caplog
):
    monkeypatch.setattr(
        fused, "conv_relu_pool_bwd_kernel", Corrupt(fused.conv_relu_pool_bwd_kernel, 4)
    )
    yt, b = _data(3, 2, 4, 6), _data(3, seed=1)
    y, arg = gpu.conv_relu_pool2x2_fwd(backend.asarray(yt), backend.asarray(b))  # it agrees
    y_ref, arg_ref = cpu.conv_relu_pool2x2_fwd(yt, b)
    np.testing.assert_array_equal(to_host(y), y_ref)
    dy = _data(*y_ref.shape, seed=2)
    with caplog.at_level(logging.WARNING, logger="gpucnn.backend"):
        dy2, db = gpu.conv_relu_pool2x2_bwd(backend.asarray(dy), arg, y, (4, 6))
    want = cpu.conv_relu_pool2x2_bwd(dy, arg_ref, y_ref, (4, 6))
    np.testing.assert_array_equal(to_host(dy2), want[0])
    np.testing.assert_allclose(to_host(db), want[1], rtol=1e-5)
    (line,) = _lines(caplog)
    assert "the fused bias + ReLU + 2x2 max pool kernels (cuda/fused.py) disagree with" in line
    assert "dY2 differs by" in line
    assert [v.ok for v in kernel_checks.verdicts()] == [True, False]


def test_a_new_kernel_path_registers_into_the_same_checks(
    backend, kernel_checks, expect_mismatch, monkeypatch, caplog
):
    """A later path (a Winograd convolution, say) registers and runs through selfcheck.run:
    checked per (path, shape, device), switched off per device."""
    monkeypatch.setitem(selfcheck.PATHS, "winograd", selfcheck.Path("winograd", "x", "y"))
    selfcheck.register("winograd", "the Winograd kernels", "im2col + cuBLAS")
    calls = []
    ones = backend.asarray(np.ones(3, np.float32))

    def fast(off=0.0):
        calls.append("fast")
        return (ones + np.float32(off),)

    def reference(product):
        calls.append("reference")
        return (ones.copy(),), lambda: (1.0,)

    def run(shape, off=0.0):
        return selfcheck.run("winograd", shape, lambda: fast(off), reference, ("y",), product=None)

    run((4, 4))
    run((4, 4))
    assert calls == ["fast", "reference", "fast"]
    monkeypatch.setattr(selfcheck, "current_device", lambda: 1)
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="gpucnn.backend"):
        (out,) = run((4, 4), off=1.0)  # another device: checked again, and it disagrees there
        run((8, 8))
    assert calls == ["fast", "reference", "reference"]  # off on device 1: the reference alone
    np.testing.assert_array_equal(to_host(out), np.ones(3))
    (line,) = _lines(caplog)
    assert line.startswith("the Winograd kernels disagree with im2col + cuBLAS on device 1")
    monkeypatch.setattr(selfcheck, "current_device", lambda: 0)
    calls.clear()
    run((8, 8))  # still on for device 0
    assert calls == ["fast", "reference"]
