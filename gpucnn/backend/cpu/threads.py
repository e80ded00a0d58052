"""How many cores the CPU kernels use, and the split of a kernel's work that uses them.

A whole step runs on these threads. The Numba kernels (im2col and col2im, the Winograd
transforms, pooling, ReLU, BatchNorm, the loss, Adam) are serial loops over independent items
(images, planes, channels, rows, elements); :func:`split` runs one over ranges of its items in
threads, the first range in the calling thread. The kernels release the GIL
(``nogil=True``), so the ranges run at once. Each range writes only its own items and any sum
is taken per item and added afterwards in one fixed order, so these kernels give the same
bits whatever the thread count. The matrix products split the same way (gemm.matmul: by batch
items, rows or columns, BLAS on one thread in each range, :func:`blas_single`), so OpenBLAS's
own pool, which spins after each call, never runs beside this one; a range is a narrower
product, which BLAS may round differently, so a split product matches the unsplit one to
float32 rounding and repeats its bits run to run at a given thread count.

The number of threads is one setting for both: :func:`set_num_threads` sizes BLAS (through
threadpoolctl) and the kernels together; until it is called, the kernels take BLAS's own
thread count (OpenBLAS starts one per core, or what OPENBLAS_NUM_THREADS / OMP_NUM_THREADS
say). Inside the Trainer's sharded step (gpucnn.train.parallel) every shard already has a core,
so there :func:`limit` makes both serial for the step and the shards do not oversubscribe.

Why threads of our own rather than Numba's ``parallel=True``: the sharded step calls these
kernels from several threads at once, which Numba's workqueue layer does not allow, and
Numba's OpenMP pool spins after each kernel, against OpenBLAS's threads (pool.py's
measurement). Here an idle worker sleeps on a lock, and a hand-off costs ~10 µs (a kernel
smaller than ``grain`` items per thread runs serially: see :func:`split`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

GRAIN = 1 << 15  # elements: a kernel's range smaller than this costs more to hand to a thread
_setting: list[int | None] = [None]  # the kernels' thread count; None: BLAS's, read once
_workers: list[_Worker] = []  # started as needed, kept for the process's life
_pool_lock = threading.Lock()  # one split at a time uses the workers; others run serially


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@functools.cache
def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    counts = [int(i.get("num_threads") or 1) for i in threadpool_info() if i["user_api"] == "blas"]
    return max(counts) if counts else cores()


def get_num_threads() -> int:
    """The threads a CPU kernel splits its work over (BLAS's count unless set)."""
    n = _setting[0]
    return _blas_threads() if n is None else n


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for BLAS and for the CPU kernels, like ``torch.set_num_threads``.

    Raises:
        ValueError: n is not a positive integer.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: expected a positive integer, got {n!r}")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n, user_api="blas")
    _setting[0] = n


@contextlib.contextmanager
def limit(n: int) -> Iterator[None]:
    """Within the block, CPU kernels split over at most ``n`` threads (BLAS is the caller's to
    limit; the sharded step limits both)."""
    was = _setting[0]
    _setting[0] = max(1, min(n, get_num_threads()))
    try:
        yield
    finally:
        _setting[0] = was


@functools.cache
def _blas_libs() -> tuple:
    """threadpoolctl's controllers of the BLAS libraries loaded in this process (NumPy's)."""
    from threadpoolctl import ThreadpoolController

    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


_blas_lock = threading.Lock()
_blas_saved: list = [0, None]  # [blocks open, BLAS's thread counts before the first]


@contextlib.contextmanager
def blas_single() -> Iterator[None]:
    """BLAS runs on its calling thread alone within the block (its setting is put back when
    the last open block closes, so overlapping blocks do not undo each other; OpenBLAS 0.3.31
    ignored a raise from another thread than the one that had lowered it, so a last block
    closed in another thread may leave BLAS on one thread, the safe way round):
    each range of a product split over these threads is one single-threaded GEMM, and
    OpenBLAS's own threads stay asleep, instead of spinning next to ours after every call."""
    libs = _blas_libs()
    with _blas_lock:
        if _blas_saved[0] == 0:
            _blas_saved[1] = [lib.get_num_threads() for lib in libs]
            for lib in libs:
                lib.set_num_threads(1)
        _blas_saved[0] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_saved[0] -= 1
            if _blas_saved[0] == 0:
                for lib, n in zip(libs, _blas_saved[1], strict=True):
                    lib.set_num_threads(n)


class _Worker:
    """A daemon thread that runs one job at a time: ``start(fn, args)``, then ``wait()``."""

    def __init__(self) -> None:
        self._go, self._done = threading.Lock(), threading.Lock()
        self._go.acquire()
        self._done.acquire()
        self._job: tuple[Callable[..., Any], tuple] | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._loop, name="gpucnn-kernel", daemon=True).start()

    def _loop(self) -> None:
        while True:
            self._go.acquire()
            fn, args = self._job  # type: ignore[misc]
            self._job = None  # keep no reference to the arrays once the range is done
            try:
                fn(*args)
            except BaseException as exc:  # handed to the caller by wait()
                self._error = exc
            del fn, args
            self._done.release()

    def start(self, fn: Callable[..., Any], args: tuple) -> None:
        self._job, self._error = (fn, args), None
        self._go.release()

    def wait(self) -> BaseException | None:
        self._done.acquire()
        return self._error


def grain(per_item: int) -> int:
    """The fewest items worth a thread of their own when each holds ``per_item`` elements."""
    return max(1, GRAIN // max(1, per_item))


def split(fn: Callable[..., Any], items: int, *args: Any, grain: int = 1) -> None:
    """Run ``fn(*args, lo, hi)`` over ranges [lo, hi) that cover [0, items), at most one per
    thread and none smaller than ``grain`` items, and return when all are done (the first
    error is raised). Serial when one thread is set, when the work is small, or when another
    thread's split holds the workers."""
    k = min(get_num_threads(), items // max(1, grain))
    if k <= 1 or not _pool_lock.acquire(blocking=False):
        fn(*args, 0, items)
        return
    try:
        while len(_workers) < k - 1:
            _workers.append(_Worker())
        bounds = [items * i // k for i in range(k + 1)]
        for i in range(1, k):
            _workers[i - 1].start(fn, (*args, bounds[i], bounds[i + 1]))
        try:
            fn(*args, bounds[0], bounds[1])
        finally:
            errors = [_workers[i - 1].wait() for i in range(1, k)]  # every range has ended
    finally:
        _pool_lock.release()
    for err in errors:
        if err is not None:
            raise err
