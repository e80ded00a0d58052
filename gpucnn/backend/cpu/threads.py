"""How many cores the CPU kernels use, and the batch split that uses them.

BLAS already runs a GEMM on every core. The rest of a step (im2col and col2im, the Winograd
transforms, pooling, ReLU, BatchNorm, the loss, Adam) runs in Numba kernels, which are serial
loops; :func:`split` runs one over ranges of the batch (or of any independent items) in
threads, the first range in the calling thread. The kernels release the GIL (``nogil=True``),
so the ranges run at once.

The number of threads is one setting for both: :func:`set_num_threads` sizes BLAS (through
threadpoolctl) and the kernels together; until it is called, the kernels take BLAS's own
thread count (OpenBLAS starts one per core, or what OPENBLAS_NUM_THREADS / OMP_NUM_THREADS
say). Inside the Trainer's sharded step (gpucnn.train.parallel) each shard already has a core,
so there :func:`limit` makes both serial for the step and the shards do not oversubscribe.

Why threads and not Numba's ``parallel=True``: the sharded step calls these kernels from
several threads at once, which Numba's workqueue layer does not allow, and a Numba pool next
to OpenBLAS's spun against it (pool.py's measurement). Here idle threads wait on a lock.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

MIN_ITEMS = 2  # fewer items than this run serially: a hand-off costs ~20-50 µs
_lock = threading.Lock()
_setting: list[int | None] = [None]  # the kernels' thread count; None: BLAS's, read once
_pool: list[ThreadPoolExecutor | None] = [None]


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@functools.cache
def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    counts = [
        int(i.get("num_threads") or 1) for i in threadpool_info() if i.get("user_api") == "blas"
    ]
    return max(counts) if counts else cores()


def get_num_threads() -> int:
    """The threads a CPU kernel splits its work over (BLAS's count unless set)."""
    n = _setting[0]
    return _blas_threads() if n is None else n


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for BLAS and for the CPU kernels (like ``torch.set_num_threads``).

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
    """Within the block, CPU kernels split over at most ``n`` threads (BLAS is the caller's
    to limit: the sharded step does both)."""
    was = _setting[0]
    _setting[0] = max(1, min(n, get_num_threads()))
    try:
        yield
    finally:
        _setting[0] = was


def _executor(workers: int) -> ThreadPoolExecutor:
    with _lock:
        pool = _pool[0]
        if pool is None or pool._max_workers < workers:  # grown when the setting grows
            if pool is not None:
                pool.shutdown(wait=False)
            pool = _pool[0] = ThreadPoolExecutor(workers, thread_name_prefix="gpucnn-kernel")
        return pool


def split(fn: Callable[..., Any], items: int, *args: Any) -> None:
    """Run ``fn(*args, lo, hi)`` over ranges [lo, hi) that cover [0, items), one range per
    thread, and return when all are done (the first error is raised)."""
    k = min(get_num_threads(), items // max(1, MIN_ITEMS // 2))
    if k <= 1 or items < MIN_ITEMS:
        fn(*args, 0, items)
        return
    bounds = [items * i // k for i in range(k + 1)]
    pool = _executor(k - 1)
    futures = [pool.submit(fn, *args, bounds[i], bounds[i + 1]) for i in range(1, k)]
    try:
        fn(*args, bounds[0], bounds[1])
    finally:
        errors = [f.exception() for f in futures]  # waits for every range
    for err in errors:
        if err is not None:
            raise err
