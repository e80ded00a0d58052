"""GEMM into a preallocated output: ``out = alpha * op(a) @ op(b) + beta * out``, op(x) = x.T
when ``trans_x``. The CPU twin of gpucnn.backend.cuda.gemm, which the captured GPU step uses
in place of cuBLAS; here NumPy's matmul (BLAS) does the work.

With ``beta == 0`` the product goes straight into ``out`` (never read, so it may hold
garbage); otherwise a temporary holds it. Nothing here splits K, so ``gemm_workspace_size``
is 0 and ``workspace`` is accepted for the CUDA twin's sake.

``matmul(a, b)`` is the product the functional ops (conv, linear, Winograd) call: NumPy's
``a @ b`` (BLAS), split over gpucnn's kernel threads (gpucnn.backend.cpu.threads) when there
are several and the product is large enough: a batch of products by batch items, one product
by rows of ``a`` or columns of ``b`` (whichever copies less: each range packs the operand it
does not split), each range one single-threaded GEMM. Each element is the same K-term dot
product split or not, but a range is a narrower product, for which OpenBLAS may take another
kernel or block K another way (its Haswell kernels do, for column ranges too; its SkylakeX
ones keep column and batch ranges bit for bit): a split product equals the unsplit one to
float32 rounding (a few ulps × √K of the sum of |a_ik b_kj|), depends on the thread count and
the CPU's kernels, and is the same bits from run to run on one machine at a given count
(tests/backend/test_threads.py, which CI also runs with the Haswell kernels). One pool of threads,
which sleep between kernels, does all of a step's work: with OpenBLAS's own threads for the
GEMMs and these for the rest, each pool's idle threads spun against the other's work
(measured on the seed model's plain step, batch 64, 2 cores: 15.6 ms with both pools, 11.6 ms
with one).
The CUDA twin switches to the GEMM kernels while a step is captured into a CUDA graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpucnn.backend.cpu import threads

__all__ = ["gemm", "gemm_workspace_size", "matmul"]


def gemm_workspace_size(m: int, n: int, k: int) -> int:
    """Elements ``gemm`` needs in ``workspace`` for an M×N product over K: none on the CPU."""
    return 0


MIN_SPLIT_MACS = 1 << 20  # multiply-adds: a smaller product costs more to hand over than to do


def matmul(a: Any, b: Any) -> Any:
    """Shape: a (M, K), b (K, N) -> a @ b (M, N), or a batch of them: a (B, M, K), b (B, K, N)
    -> (B, M, N); a new array (NumPy's matmul, BLAS), split over the kernel threads."""
    if threads.get_num_threads() < 2:
        return a @ b  # BLAS as its own setting says (one thread in the sharded step)
    m, kk = a.shape[-2:]
    n = b.shape[-1]
    batch = a.shape[0] if a.ndim == 3 else 1
    if (
        a.ndim != b.ndim
        or a.ndim not in (2, 3)
        or a.shape[:-2] != b.shape[:-2]
        or b.shape[-2] != kk
        or batch * m * kk * n < MIN_SPLIT_MACS
    ):
        with threads.blas_single():  # not split, and OpenBLAS's pool still left asleep
            return a @ b
    out = np.empty((*a.shape[:-2], m, n), dtype=np.result_type(a, b))
    if batch > 1:
        fn, items = _batch_range, batch
    elif m >= n:  # split the rows of a: each range packs all of b (K, N), the smaller here
        fn, items = _row_range, m
    else:
        fn, items = _column_range, n
    with threads.blas_single():
        threads.split(fn, items, a, b, out)
    return out


def _batch_range(a: Any, b: Any, out: Any, lo: int, hi: int) -> None:
    np.matmul(a[lo:hi], b[lo:hi], out=out[lo:hi])


def _row_range(a: Any, b: Any, out: Any, lo: int, hi: int) -> None:
    np.matmul(a[lo:hi], b, out=out[lo:hi])


def _column_range(a: Any, b: Any, out: Any, lo: int, hi: int) -> None:
    np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])


def gemm(
    a: Any,
    b: Any,
    out: Any,
    trans_a: bool = False,
    trans_b: bool = False,
    alpha: float = 1.0,
    beta: float = 0.0,
    workspace: Any = None,
) -> Any:
    """Shape: op(a) (M, K), op(b) (K, N), out (M, N) -> out, written in place.

    out = alpha * op(a) @ op(b) + beta * out, op(x) = x.T when trans_x.
    """
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    if opa.ndim != 2 or opb.ndim != 2 or out.ndim != 2:
        raise ValueError(f"gemm: expected 2-D arrays, got {a.shape}, {b.shape}, {out.shape}")
    (m, k), (kb, n) = opa.shape, opb.shape
    if k != kb or out.shape != (m, n):
        raise ValueError(
            f"gemm: op(a) {(m, k)} @ op(b) {(kb, n)} does not give out {tuple(out.shape)} "
            f"(trans_a={trans_a}, trans_b={trans_b})"
        )
    if not a.dtype == b.dtype == out.dtype or out.dtype not in (np.float32, np.float64):
        raise ValueError(f"gemm: a {a.dtype}, b {b.dtype} and out {out.dtype}: expected one float")
    dt = out.dtype.type
    if beta == 0:
        np.matmul(opa, opb, out=out)
        if alpha != 1:
            out *= dt(alpha)
        return out
    prod = np.matmul(opa, opb)
    if alpha != 1:
        prod *= dt(alpha)
    out *= dt(beta)
    out += prod
    return out
