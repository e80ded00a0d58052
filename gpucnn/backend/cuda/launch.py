"""What every CUDA launcher shares: the stream, the launch shape and the argument checks.

Launchers check shapes, dtype and contiguity, allocate outputs with the input's array module
(CuPy on a GPU; NumPy under NUMBA_ENABLE_CUDASIM=1) and launch one thread per output element
(grid-stride loops, at most MAX_BLOCKS blocks).

One stream: every launch is ``kernel[config(n)]`` (or ``kernel[grid, threads, stream()]``),
so it goes to the stream the CUDA backend's ``prepare()`` hands :func:`use_stream`, the same
stream CuPy's operations run on (it is CuPy's current stream). Numba's side of it is one
``numba.cuda.external_stream`` object, built once there. Before ``prepare()``, and in the
simulator (which runs every launch at once, in order, and has no external streams), the
stream is 0: the default stream, as a launch without one. Launch configurations are cached
per size, so a step's launches compute their grid once per shape.

Capturable mode (:func:`capturable`, :func:`capturing`): while a step is captured into a CUDA
graph (gpucnn.backend.CudaBackend.capture), and while its warm-up runs, launchers take the
path a capture allows: ``matmul`` runs the Numba GEMM (cuda/gemm.py) instead of cuBLAS, which
CuPy refuses during stream capture. :func:`stream_capturing` tells the capture itself from its
warm-up: the kernel paths' self-checks (selfcheck.py) read the device, so they run in the
warm-up, never in the capture.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from gpucnn.backend import array_module
from gpucnn.backend.numba_cuda import cuda

THREADS = 256
MAX_BLOCKS = 8192
FILTER_GRID_BLOCKS = 1024  # blocks of a per-filter reduction grid, over all filters

__all__ = [
    "MAX_BLOCKS",
    "THREADS",
    "array_module",
    "blocks",
    "capturable",
    "capturing",
    "check",
    "config",
    "current_stream",
    "filter_grid",
    "flat",
    "out_size",
    "stream",
    "stream_capturing",
    "use_stream",
]

_launch_stream: Any = 0  # what every launch passes as its stream (Numba's object, or 0)
_cupy_stream: Any = None  # the CuPy stream it wraps (None: the default stream)
_capturable = 0  # nesting depth of capturable(): > 0 while a step is captured or warmed up


def use_stream(cupy_stream: Any) -> None:
    """Launch every kernel on ``cupy_stream`` (a CuPy stream; None for the default stream).

    Numba launches on it through one ``external_stream(cupy_stream.ptr)`` built here; a second
    call with the same stream changes nothing. With every launch and every CuPy operation on
    one stream they run in order, so Numba's habit of synchronizing the stream a CuPy array
    names (its ``__cuda_array_interface__`` "stream") before each launch would only make the
    host wait, and while the stream is being captured into a CUDA graph it is an error: it is
    turned off here (NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0).
    """
    global _launch_stream, _cupy_stream
    if cupy_stream is _cupy_stream:
        return
    external = getattr(cuda, "external_stream", None)  # absent from the simulator
    if cupy_stream is None or external is None:
        _launch_stream = 0
    else:
        _launch_stream = external(cupy_stream.ptr)
        _no_array_interface_sync()
    _cupy_stream = cupy_stream
    config.cache_clear()


def _no_array_interface_sync() -> None:
    os.environ["NUMBA_CUDA_ARRAY_INTERFACE_SYNC"] = "0"  # kept if Numba rereads its settings
    api = getattr(cuda, "api", None)  # the module whose from_cuda_array_interface reads it
    if api is not None and hasattr(api, "config"):
        api.config.CUDA_ARRAY_INTERFACE_SYNC = 0


def capturing() -> bool:
    """True inside :func:`capturable`: launchers must take the path a stream capture allows."""
    return _capturable > 0


@contextlib.contextmanager
def capturable() -> Iterator[None]:
    """Launchers take the capturable path inside the block (nested blocks are fine)."""
    global _capturable
    _capturable += 1
    try:
        yield
    finally:
        _capturable -= 1


def stream_capturing() -> bool:
    """True while the stream every launch goes to is being captured into a CUDA graph: nothing
    runs then, and reading the device is refused (capturable() alone, a warm-up, runs)."""
    s = _cupy_stream
    if s is None or not hasattr(s, "is_capturing"):
        return False
    try:
        return bool(s.is_capturing())
    except Exception:  # a CuPy that cannot ask: a capture would have failed already
        return False


def current_stream() -> Any:
    """The CuPy stream every launch goes to (None: the default stream)."""
    return _cupy_stream


def stream() -> Any:
    """What a launch passes as its stream: ``kernel[grid, threads, stream()]``."""
    return _launch_stream


@functools.lru_cache(maxsize=1024)
def blocks(n: int) -> int:
    return max(1, min(MAX_BLOCKS, -(-n // THREADS)))


@functools.lru_cache(maxsize=1024)
def config(n: int) -> tuple[int, int, Any]:
    """(blocks, THREADS, stream) for one thread per element of ``n``: ``kernel[config(n)]``."""
    return blocks(n), THREADS, _launch_stream


@functools.lru_cache(maxsize=256)
def filter_grid(nf: int, items: int, threads: int = THREADS) -> tuple[int, int]:
    """(blocks along x, nf) for a kernel whose blockIdx.y is a filter and whose blocks of
    ``threads`` along x split that filter's ``items`` (each block then writes one partial sum
    per filter): about FILTER_GRID_BLOCKS blocks in all, at least one per filter, no more than
    the items fill."""
    return max(1, min(-(-items // threads), FILTER_GRID_BLOCKS // nf)), nf


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
