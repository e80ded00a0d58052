"""Backends: where arrays live and which kernels run on them.

This is the only package that imports cupy or numba.cuda. A run resolves its device once,
with :func:`get_backend`, and hands the :class:`Backend` object to whatever needs it (the
Trainer, the DataLoader, ``Module.to``); device-specific set-up is a method of that object.
The math below asks :func:`backend_of` for the backend of the arrays it was handed and calls
that backend's kernels; the device branch happens once, here, not throughout the math.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from gpucnn.backend import cpu as _cpu

log = logging.getLogger("gpucnn")

DEVICES = ("auto", "cpu", "cuda")


class BackendUnavailableError(RuntimeError):
    """A requested backend cannot run on this machine; the message says what is missing."""


@dataclass(frozen=True)
class Backend:
    """A device's array module and kernels, and what a run on it sets up.

    Attributes:
        name: "cpu" or "cuda".
        xp: the array module (numpy or cupy).
        kernels: the module holding this device's kernels (im2col, col2im, ...); the CPU and
            CUDA modules export the same functions with the same signatures.
        host_memory: arrays live in host memory, so reading a value needs no device sync.
    """

    name: str
    xp: ModuleType
    kernels: ModuleType
    host_memory: bool

    def prepare(self) -> None:
        """Device-specific set-up for a training run, made once per process."""

    def asarray(self, a: Any) -> Any:
        """``a`` as an array on this device (no copy when it already lives here)."""
        return self.xp.asarray(a)

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


@dataclass(frozen=True, repr=False)
class CpuBackend(Backend):
    """NumPy arrays; kernels in gpucnn.backend.cpu."""

    def prepare(self) -> None:
        """Keep freed memory for reuse, so a step's large temporaries do not fault their pages
        in every step (gpucnn.backend.cpu.memory)."""
        from gpucnn.backend.cpu.memory import keep_freed_memory

        keep_freed_memory()

    def asarray(self, a: Any) -> np.ndarray:
        return to_host(a)


CPU = CpuBackend("cpu", np, _cpu, host_memory=True)


@dataclass(frozen=True, repr=False)
class CudaBackend(Backend):
    """CuPy arrays; kernels in gpucnn.backend.cuda; everything on one stream.

    ``stream`` is the backend's CuPy stream, made once per process. ``prepare()`` makes it
    CuPy's current stream in the calling thread (so CuPy's operations run on it; CuPy's current
    stream is per thread, and a run's step runs in the thread that prepared it) and has every
    Numba launch go to it (gpucnn.backend.cuda.launch.use_stream): one stream orders a whole
    training step, as capturing the step into a CUDA graph requires.
    """

    @functools.cached_property
    def stream(self) -> Any:
        """The CuPy stream every launch of this backend goes to once ``prepare()`` has run."""
        return self.xp.cuda.Stream(non_blocking=False)

    def prepare(self) -> None:
        """Make ``stream`` current for CuPy and Numba (again, when called again)."""
        from gpucnn.backend.cuda import launch

        self.stream.use()
        launch.use_stream(self.stream)

    @contextlib.contextmanager
    def capturable(self) -> Iterator[None]:
        """Run the block's launches as a capture would (the GEMM kernels in place of cuBLAS,
        gpucnn.backend.cuda.launch.capturing) without capturing: the warm-up of a step that
        is captured later, which compiles every kernel the capture will hold."""
        from gpucnn.backend.cuda import launch

        with launch.capturable():
            yield

    @contextlib.contextmanager
    def capture(self) -> Iterator[Capture]:
        """Capture the block's work on ``stream`` into a CUDA graph: ``capture.graph`` once the
        block has ended (``graph.launch(backend.stream)`` replays it).

        Nothing in the block runs: CUDA records the launches with their arguments (so what
        changes per step must be read from device arrays) and refuses host reads and cuBLAS,
        which launchers avoid here (launch.capturing()). Memory allocated in the block comes
        from CuPy's default pool through an allocator that keeps every block it hands out in
        ``capture.kept``: the graph reads and writes those addresses at every launch, so none
        may go back to the pool while the graph lives. Keep the Capture as long as the graph.
        When the block raises, the capture is ended (its graph discarded) and the error
        propagates.
        """
        from gpucnn.backend.cuda import launch

        self.prepare()  # the stream is current for CuPy and Numba
        capture = Capture()
        pool = self.xp.get_default_memory_pool()

        def keep(size: int) -> Any:
            memory = pool.malloc(size)
            capture.kept.append(memory)
            return memory

        with launch.capturable(), self.xp.cuda.using_allocator(keep):
            self.stream.begin_capture()
            try:
                yield capture
            except BaseException:
                with contextlib.suppress(Exception):  # an invalidated capture raises here too
                    self.stream.end_capture()
                raise
            capture.graph = self.stream.end_capture()


@dataclass
class Capture:
    """What :meth:`CudaBackend.capture` hands out: the graph (once the block has ended) and the
    memory blocks it uses, which must outlive it."""

    graph: Any = None
    kept: list = field(default_factory=list)


@functools.cache
def _cuda_missing() -> str | None:
    """Why the CUDA backend cannot be used here, as one sentence; None when it can.

    Asked once per process: backend_of calls get_backend for every op on device arrays.
    """
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        return (
            f"CuPy is not importable ({type(exc).__name__}: {exc}); "
            "install the 'gpu' extra (CUDA 13) or 'gpu-cuda12' (CUDA 12)"
        )
    try:
        from gpucnn.backend.numba_cuda import cuda
    except BackendUnavailableError as exc:
        return str(exc)
    except Exception as exc:
        return f"numba.cuda is not importable ({type(exc).__name__}: {exc})"
    try:
        if not cuda.is_available():
            return "numba.cuda sees no usable NVIDIA GPU or driver"
    except Exception as exc:
        return f"numba.cuda could not query the GPU ({type(exc).__name__}: {exc})"
    try:
        cupy.zeros(1, dtype=cupy.float32) + 1  # CuPy can allocate and launch
    except Exception as exc:
        return f"CuPy cannot use the GPU ({type(exc).__name__}: {exc})"
    return None


@functools.cache
def _cuda_backend() -> CudaBackend:
    """The CUDA Backend, built on first use (importing CuPy and the kernels only then)."""
    import cupy

    from gpucnn.backend import cuda as kernels

    return CudaBackend("cuda", cupy, kernels, host_memory=False)


def get_backend(device: str | Backend = "auto") -> Backend:
    """Return the backend for a device name (a Backend is returned as it is).

    Args:
        device: "auto" (CUDA when usable, else CPU; logs which it picked, once per process:
            the choice cannot change within one), "cpu", "cuda", or a Backend already
            resolved: a run resolves its device once and passes the object.

    Returns:
        The :class:`Backend`.

    Raises:
        ValueError: for an unknown device name.
        BackendUnavailableError: for "cuda" when it cannot run here; never a silent fallback.
    """
    if isinstance(device, Backend):
        return device
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        return CPU
    why = _cuda_missing()
    if why is None:
        if device == "auto":
            _say_auto("device 'auto' picked cuda")
        return _cuda_backend()
    if device == "cuda":
        raise BackendUnavailableError(f"device 'cuda' is unavailable: {why}")
    _say_auto(f"device 'auto' picked cpu (cuda unavailable: {why})")
    return CPU


@functools.cache  # once per process: a run that resolves "auto" for each task says it once
def _say_auto(line: str) -> None:
    log.info("%s", line)


def is_device_array(a: Any) -> bool:
    """True for a CuPy array, without importing CuPy."""
    return type(a).__module__.split(".")[0] == "cupy"


def array_module(a: Any) -> ModuleType:
    """numpy or cupy: the module of ``a``'s device (without importing CuPy for host arrays)."""
    if is_device_array(a):
        import cupy

        return cupy
    return np


def backend_of(*arrays: Any) -> Backend:
    """The backend that owns these arrays (as cupy.get_array_module does).

    Raises:
        ValueError: when the arrays live on different devices.
    """
    on_device = [is_device_array(a) for a in arrays if a is not None]
    if any(on_device):
        if not all(on_device):
            raise ValueError("arrays live on different devices (some CuPy, some NumPy)")
        return get_backend("cuda")
    return CPU


def to_device(a: Any, device: str | Backend) -> Any:
    """Return ``a`` as an array on ``device`` ("cpu", "cuda" or a Backend); no copy if already
    there."""
    return get_backend(device).asarray(a)


def to_host(a: Any) -> np.ndarray:
    """Return ``a`` as a NumPy array (copying from the GPU when it lives there)."""
    if is_device_array(a):
        return a.get()
    return np.asarray(a)
