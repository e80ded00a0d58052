"""Classification metrics, computed on the host from predictions and labels."""

from __future__ import annotations

from typing import Any

import numpy as np

from gpucnn.backend import to_host


def accuracy(logits_or_preds: Any, labels: Any) -> float:
    """Fraction of correct predictions; accepts logits (N, K) or predicted classes (N,)."""
    p = to_host(logits_or_preds)
    preds = p.argmax(axis=1) if p.ndim == 2 else p
    y = to_host(labels)
    return float((preds == y).mean()) if y.size else 0.0


def topk_accuracy(logits: Any, labels: Any, k: int = 5) -> float:
    """Fraction of samples whose label is among the k highest logits."""
    z, y = to_host(logits), to_host(labels)
    if not 1 <= k <= z.shape[1]:
        raise ValueError(f"topk_accuracy: k must be in [1, {z.shape[1]}], got {k}")
    top = np.argpartition(-z, k - 1, axis=1)[:, :k]
    return float((top == y[:, None]).any(axis=1).mean()) if y.size else 0.0


def confusion_matrix(preds: Any, labels: Any, num_classes: int) -> np.ndarray:
    """C[i, j] = number of samples of true class i predicted as class j. Shape (K, K)."""
    p, y = to_host(preds), to_host(labels)
    if p.ndim == 2:
        p = p.argmax(axis=1)
    return np.bincount(y * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each class from a confusion matrix (NaN for a class with no samples)."""
    totals = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(cm) / np.maximum(totals, 1), np.nan)
