"""GEMM into a preallocated output: ``out = alpha * op(a) @ op(b) + beta * out``, op(x) = x.T
when ``trans_x``. The CPU twin of gpucnn.backend.cuda.gemm, which the captured GPU step uses
in place of cuBLAS; here NumPy's matmul (BLAS) does the work.

With ``beta == 0`` the product goes straight into ``out`` (never read, so it may hold
garbage); otherwise a temporary holds it. Nothing here splits K, so ``gemm_workspace_size``
is 0 and ``workspace`` is accepted for the CUDA twin's sake.

``matmul(a, b)`` is the product the functional ops (conv, linear) call: NumPy's ``a @ b``, so
the CPU path computes exactly what it computed before they called it (the CUDA twin switches
to the GEMM kernels while a step is captured into a CUDA graph).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["gemm", "gemm_workspace_size", "matmul"]


def gemm_workspace_size(m: int, n: int, k: int) -> int:
    """Elements ``gemm`` needs in ``workspace`` for an M×N product over K: none on the CPU."""
    return 0


def matmul(a: Any, b: Any) -> Any:
    """Shape: a (M, K), b (K, N) -> a @ b (M, N), a new array (NumPy's matmul, BLAS)."""
    return a @ b


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
