"""CUDA kernel tests: run under NUMBA_ENABLE_CUDASIM=1 on NumPy arrays (CPU machines, CI), or
on a real GPU with CuPy arrays (same tests, no simulator). Collected only in those two cases;
tests/backend/test_cuda_simulator.py runs this folder in a simulator subprocess."""

from __future__ import annotations

import os

import numpy as np
import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _gpu() -> bool:
    try:
        import cupy
        from numba import cuda

        return cuda.is_available() and cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


if not SIM and not _gpu():
    collect_ignore_glob = ["test_*.py"]

if SIM:
    try:
        import cupy  # noqa: F401
    except ImportError:  # the usual case on a CPU machine: let the device path run anyway
        from tests.backend.sim import fakecupy

        fakecupy.install()


@pytest.fixture(autouse=True)
def kernel_checks(request):
    """The kernel paths' self-checks (gpucnn.backend.cuda.selfcheck) start afresh in every
    test, and a test that does not ask for ``expect_mismatch`` must leave every path on: a
    kernel that disagreed with its reference fails the test that met it."""
    from gpucnn.backend.cuda import selfcheck

    selfcheck.CHECKS.forget()
    yield selfcheck.CHECKS
    off = [v.line() for v in selfcheck.CHECKS.switched_off()]
    selfcheck.CHECKS.forget()
    if "expect_mismatch" not in request.fixturenames:
        assert not off, f"a kernel path was switched off: {off}"


@pytest.fixture
def expect_mismatch():
    """For a test that injects a kernel mismatch: the paths it switches off are expected."""


@pytest.fixture
def dev():
    """(to_device, to_host) for the kernels' arrays."""
    if SIM:
        return (lambda a: np.ascontiguousarray(a)), np.asarray
    import cupy

    return cupy.asarray, cupy.asnumpy
