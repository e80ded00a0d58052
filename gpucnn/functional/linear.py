"""Fully connected layer: y = x W^T + b, with W (out, in) as in PyTorch.

Backward: dx = dy W, dW = dy^T x, db = sum over the batch of dy.

The products are the backend's ``kernels.matmul`` (NumPy's or CuPy's ``@``; the GEMM kernels
while a CUDA step is captured into a graph, where cuBLAS is refused).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from gpucnn.backend import backend_of
from gpucnn.functional.checks import check_cache, check_channels, check_float, check_rank
from gpucnn.grad_mode import kept


class LinearCache(NamedTuple):
    """What linear_backward needs."""

    x: Any  # (N, in): dW = dy^T x
    w: Any  # (out, in): dx = dy W
    has_bias: bool


def linear_forward(x: Any, w: Any, b: Any = None) -> tuple[Any, LinearCache | None]:
    """Shape: x (N, in), w (out, in), b (out,) -> y (N, out)."""
    check_rank("Linear", x, 2, "(N, in_features)")
    check_float("Linear", x, like=w)
    check_channels("Linear", x, w.shape[1])
    y = backend_of(x, w).kernels.matmul(x, w.T)
    if b is not None:
        y += b
    return y, kept(LinearCache(x, w, b is not None))


def linear_backward(
    dy: Any, cache: LinearCache, need_dx: bool = True, need_params: bool = True
) -> tuple[Any, Any, Any]:
    """Shape: dy (N, out) -> dx (N, in), dw (out, in), db (out,) (None where not needed)."""
    c = check_cache("Linear", cache, LinearCache)
    matmul = backend_of(dy).kernels.matmul
    dx = matmul(dy, c.w) if need_dx else None
    dw = matmul(dy.T, c.x) if need_params else None
    db = dy.sum(axis=0) if c.has_bias and need_params else None
    return dx, dw, db
