"""The one module that imports Numba's CUDA target.

Every CUDA kernel file takes ``cuda`` from here, so moving to numba-cuda's successor
(numba-cuda-mlir) changes this file only. numba-cuda is in maintenance mode and will not
support NumPy 2.5: it still registers ``np.row_stack``, which NumPy 2.5 removed, and its import
then fails with ``AttributeError: module 'numpy' has no attribute 'row_stack'``; that failure
becomes a BackendUnavailableError naming the fix (the ``gpu`` extras pin ``numpy<2.5``).
"""

from __future__ import annotations

from types import ModuleType


def _import_cuda() -> ModuleType:
    from numba import cuda

    return cuda


def load() -> ModuleType:
    """numba.cuda, or a BackendUnavailableError that says what to do."""
    from gpucnn.backend import BackendUnavailableError

    try:
        return _import_cuda()
    except AttributeError as exc:
        if "row_stack" not in str(exc):
            raise
        import numpy as np

        raise BackendUnavailableError(
            f"numba-cuda cannot be imported with NumPy {np.__version__} ({exc}): it needs "
            "numpy<2.5; pip install 'numpy<2.5' (the 'gpu' extras pin it)"
        ) from exc


cuda = load()
