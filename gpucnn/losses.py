"""Loss modules. CrossEntropyLoss fuses log-softmax and negative log-likelihood."""

from __future__ import annotations

from typing import Any

from gpucnn import functional as F


class CrossEntropyLoss:
    """Mean softmax cross-entropy over the batch, computed stably from logits.

        loss = (1/N) sum_n (logsumexp(z_n) - z_n[y_n]);  dloss/dz = (softmax(z) - onehot(y)) / N

    Shape: logits (N, K) float, labels (N,) integers in [0, K) -> a 0-d array (stays on the
    logits' device; call float() on it only when you log it).
    """

    def __init__(self) -> None:
        self._cache: Any = None  # functional.loss.CrossEntropyCache of the last forward

    def __call__(self, logits: Any, labels: Any) -> Any:
        return self.forward(logits, labels)

    def forward(self, logits: Any, labels: Any) -> Any:
        loss, self._cache = F.cross_entropy_forward(logits, labels)
        return loss

    def backward(self, dloss: Any = 1.0) -> Any:
        """Gradient with respect to the logits of the last forward call. Shape: (N, K)."""
        if self._cache is None:
            raise RuntimeError(
                "CrossEntropyLoss.backward called before forward (or after one under "
                "gpucnn.no_grad(), which keeps nothing for a backward)"
            )
        return F.cross_entropy_backward(self._cache, dloss)
