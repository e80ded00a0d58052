"""Elementwise activations and the softmax used for inference."""

from __future__ import annotations

from typing import Any

from gpucnn.backend import backend_of
from gpucnn.functional.checks import check_cache, check_float
from gpucnn.grad_mode import kept


def relu_forward(x: Any) -> tuple[Any, Any]:
    """y = max(x, 0), a NaN kept visible. Shape: any -> same. The cache is y itself (y > 0
    exactly where x > 0), so ReLU keeps no mask of its own."""
    check_float("ReLU", x)
    y = backend_of(x).kernels.relu_fwd(x)
    return y, kept(y)


def relu_backward(dy: Any, y: Any) -> Any:
    """dx = dy where x > 0, else 0 (the subgradient at 0 is taken as 0, as PyTorch does)."""
    return backend_of(dy).kernels.relu_bwd(dy, check_cache("ReLU", y))


def tanh_forward(x: Any) -> tuple[Any, Any]:
    """y = tanh(x). Shape: any -> same. The cache is y."""
    check_float("Tanh", x)
    y = backend_of(x).xp.tanh(x)
    return y, kept(y)


def tanh_backward(dy: Any, y: Any) -> Any:
    """dx = dy * (1 - y^2)."""
    y = check_cache("Tanh", y)
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
