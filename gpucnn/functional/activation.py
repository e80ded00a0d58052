"""Elementwise activations and the softmax used for inference."""

from __future__ import annotations

from typing import Any, NamedTuple

from gpucnn.backend import backend_of
from gpucnn.functional.checks import check_cache, check_float
from gpucnn.grad_mode import kept


class ReLUCache(NamedTuple):
    """What relu_backward needs: the output (y > 0 exactly where x > 0), so ReLU keeps no
    mask of its own."""

    y: Any


class TanhCache(NamedTuple):
    """What tanh_backward needs: the output (tanh' = 1 - y^2)."""

    y: Any


def relu_forward(x: Any) -> tuple[Any, ReLUCache | None]:
    """y = max(x, 0), a NaN kept visible. Shape: any -> same."""
    check_float("ReLU", x)
    y = backend_of(x).kernels.relu_fwd(x)
    return y, kept(ReLUCache(y))


def relu_backward(dy: Any, cache: ReLUCache) -> Any:
    """dx = dy where x > 0, else 0 (the subgradient at 0 is taken as 0, as PyTorch does)."""
    return backend_of(dy).kernels.relu_bwd(dy, check_cache("ReLU", cache, ReLUCache).y)


def tanh_forward(x: Any) -> tuple[Any, TanhCache | None]:
    """y = tanh(x). Shape: any -> same."""
    check_float("Tanh", x)
    y = backend_of(x).xp.tanh(x)
    return y, kept(TanhCache(y))


def tanh_backward(dy: Any, cache: TanhCache) -> Any:
    """dx = dy * (1 - y^2)."""
    y = check_cache("Tanh", cache, TanhCache).y
    return dy * (1 - y * y)


def softmax(logits: Any, axis: int = -1) -> Any:
    """Probabilities p_i = exp(z_i - max z) / sum_j exp(z_j - max z) (stable). Shape: same."""
    xp = backend_of(logits).xp
    z = logits - logits.max(axis=axis, keepdims=True)
    e = xp.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(logits: Any, axis: int = -1) -> Any:
    """log p_i = z_i - max z - log sum_j exp(z_j - max z) (stable). Shape: same."""
    xp = backend_of(logits).xp
    z = logits - logits.max(axis=axis, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))
