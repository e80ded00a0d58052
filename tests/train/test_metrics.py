from __future__ import annotations

import numpy as np
import pytest

from gpucnn.train import accuracy, confusion_matrix, per_class_accuracy, topk_accuracy


def test_accuracy_from_logits_and_from_classes():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]])
    labels = np.array([0, 1, 1])
    assert accuracy(logits, labels) == pytest.approx(2 / 3)
    assert accuracy(np.array([0, 1, 1]), labels) == 1.0


def test_confusion_matrix_and_per_class_accuracy():
    preds = np.array([0, 1, 1, 2, 2, 2])
    labels = np.array([0, 1, 2, 2, 2, 0])
    cm = confusion_matrix(preds, labels, 4)
    expected = np.zeros((4, 4), int)
    for t, p in zip(labels, preds, strict=True):
        expected[t, p] += 1
    np.testing.assert_array_equal(cm, expected)
    pca = per_class_accuracy(cm)
    np.testing.assert_allclose(pca[:3], [0.5, 1.0, 2 / 3])
    assert np.isnan(pca[3])  # no samples of class 3


def test_topk():
    logits = np.array([[0.1, 0.5, 0.4], [0.9, 0.04, 0.06]])
    labels = np.array([2, 1])
    assert topk_accuracy(logits, labels, 1) == 0.0
    assert topk_accuracy(logits, labels, 2) == 0.5
    assert topk_accuracy(logits, labels, 3) == 1.0
    with pytest.raises(ValueError, match=r"k must be in \[1, 3\]"):
        topk_accuracy(logits, labels, 4)
