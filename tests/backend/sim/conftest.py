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


@pytest.fixture
def dev():
    """(to_device, to_host) for the kernels' arrays."""
    if SIM:
        return (lambda a: np.ascontiguousarray(a)), np.asarray
    import cupy

    return cupy.asarray, cupy.asnumpy
