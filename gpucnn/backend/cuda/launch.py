"""What every CUDA launcher shares: the launch shape and the argument checks.

Launchers check shapes, dtype and contiguity, allocate outputs with the input's array module
(CuPy on a GPU; NumPy under NUMBA_ENABLE_CUDASIM=1) and launch one thread per output element
(grid-stride loops, at most MAX_BLOCKS blocks).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpucnn.backend import array_module

THREADS = 256
MAX_BLOCKS = 8192

__all__ = ["MAX_BLOCKS", "THREADS", "array_module", "blocks", "check", "flat", "out_size"]


def blocks(n: int) -> int:
    return max(1, min(MAX_BLOCKS, -(-n // THREADS)))


def check(name: str, a: Any, ndim: int, contiguous: bool = True) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(a.shape)}")
    if np.dtype(a.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"{name}: expected float32 (or float64), got {a.dtype}")
    if contiguous and not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array")


def out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def flat(a: Any) -> Any:
    """A 1-D view of a contiguous array (of an output we allocated), or a 1-D contiguous copy
    of a strided input: elementwise kernels take any layout."""
    return a.reshape(a.size)
