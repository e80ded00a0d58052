"""Softmax cross-entropy, fused: the loss and its gradient never form log(softmax) naively.

loss = -(1/N) sum_n log softmax(z_n)[y_n]
     = (1/N) sum_n (logsumexp(z_n) - z_n[y_n])
dloss/dz_n = (softmax(z_n) - onehot(y_n)) / N
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from gpucnn.backend import backend_of, is_device_array
from gpucnn.functional.checks import check_cache, check_float, check_rank
from gpucnn.grad_mode import kept


def check_labels(layer: str, labels: Any, n: int, num_classes: int) -> None:
    """Labels must be a 1-D integer array of length N with values in [0, num_classes).

    The range is checked for host arrays only: on a GPU it would cost a sync per step, so the
    Trainer checks every label of a loader once, on the host, before training.
    """
    if getattr(labels, "ndim", None) != 1 or labels.shape[0] != n:
        shape = getattr(labels, "shape", type(labels).__name__)
        raise ValueError(f"{layer}: expected labels of shape ({n},) for {n} logits, got {shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{layer}: labels must be integer class indices, got dtype {labels.dtype}")
    if (
        n
        and not is_device_array(labels)
        and (int(labels.min()) < 0 or int(labels.max()) >= num_classes)
    ):
        raise ValueError(
            f"{layer}: labels must lie in [0, {num_classes}) for logits of shape "
            f"({n}, {num_classes}); got values in [{int(labels.min())}, {int(labels.max())}]"
        )


class CrossEntropyCache(NamedTuple):
    """What cross_entropy_backward needs: the gradient, made with the loss."""

    dlogits: Any  # (N, K) = (softmax - onehot) / N


def cross_entropy_forward(logits: Any, labels: Any) -> tuple[Any, CrossEntropyCache | None]:
    """Mean softmax cross-entropy. Shape: logits (N, K), labels (N,) -> 0-d array.

    One fused kernel computes the loss and its gradient together; the gradient is the cache.
    """
    layer = "CrossEntropyLoss"
    check_rank(layer, logits, 2, "(N, num_classes)")
    check_float(layer, logits)
    n, k = logits.shape
    check_labels(layer, labels, n, k)
    if n == 0:
        raise ValueError(f"{layer}: empty batch (logits shape {tuple(logits.shape)})")
    loss, grad = backend_of(logits).kernels.softmax_xent_fwd(logits, labels)
    return loss, kept(CrossEntropyCache(grad))


def cross_entropy_backward(cache: CrossEntropyCache, dloss: Any = 1.0) -> Any:
    """Shape: -> dlogits (N, K) = (softmax - onehot) * dloss / N."""
    grad = check_cache("CrossEntropyLoss", cache, CrossEntropyCache).dlogits
    if isinstance(dloss, (int, float)) and dloss == 1.0:
        return grad
    return grad * grad.dtype.type(dloss)
