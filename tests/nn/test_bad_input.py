"""Bad input: a ValueError that names the layer, the shapes and the rule, before any kernel."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import nn

X = np.zeros((2, 3, 8, 8), np.float32)


@pytest.mark.parametrize(
    ("make", "x", "match"),
    [
        (
            lambda: nn.Conv2d(3, 4, 3),
            np.zeros((3, 8, 8), np.float32),
            r"Conv2d: expected a 4-D input",
        ),
        (lambda: nn.Conv2d(1, 4, 3), X, r"Conv2d: expected 1 input channels .* \(2, 3, 8, 8\)"),
        (
            lambda: nn.Conv2d(3, 4, 11),
            X,
            r"Conv2d: kernel 11x11 is larger than the padded input 8x8"
            r".*floor\(\(W - F \+ 2P\)/S\) \+ 1",
        ),
        (
            lambda: nn.Conv2d(3, 4, 3),
            X.astype(np.uint8),
            r"Conv2d: expected float32 input, got uint8 with shape \(2, 3, 8, 8\)",
        ),
        (
            lambda: nn.Conv2d(3, 4, 3),
            X.astype(np.float64),
            r"Conv2d: input dtype float64 does not match",
        ),
        (lambda: nn.MaxPool2d(3), np.zeros((1, 1, 2, 2), np.float32), r"MaxPool2d: kernel 3x3"),
        (lambda: nn.AvgPool2d(2), np.zeros((4, 4), np.float32), r"AvgPool2d: expected a 4-D input"),
        (
            lambda: nn.Linear(5, 2),
            np.zeros((2, 4), np.float32),
            r"Linear: expected 5 input channels",
        ),
        (lambda: nn.Linear(5, 2), np.zeros((2, 1, 5), np.float32), r"Linear: expected a 2-D input"),
        (lambda: nn.BatchNorm2d(4), X, r"BatchNorm2d: expected 4 input channels"),
        (lambda: nn.BatchNorm2d(3), np.zeros((1, 3, 1, 1), np.float32), r"more than 1 value"),
        (lambda: nn.ReLU(), np.zeros((2, 3), np.int64), r"ReLU: expected float32 input, got int64"),
        (
            lambda: nn.GlobalAvgPool2d(),
            np.zeros((2, 3), np.float32),
            r"GlobalAvgPool2d: expected a 4-D",
        ),
    ],
)
def test_forward_rejects(make, x, match):
    with pytest.raises(ValueError, match=match):
        make()(x)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: nn.Conv2d(3, 4, 3, stride=0), r"Conv2d: stride must be an integer >= 1, got 0"),
        (lambda: nn.Conv2d(3, 4, 0), r"Conv2d: kernel_size must be an integer >= 1"),
        (lambda: nn.Conv2d(3, 4, 3, padding=-1), r"Conv2d: padding must be"),
        (lambda: nn.Conv2d(3, 4, 3, padding="full"), r"Conv2d: padding must be"),
        (lambda: nn.Conv2d(3, 4, 3, stride=2, padding="same"), r"'same' needs stride 1"),
        (lambda: nn.Conv2d(3, 4, 4, padding="same"), r"'same' needs an odd kernel"),
        (lambda: nn.MaxPool2d(2, stride=0), r"MaxPool2d: stride must be an integer >= 1"),
        (
            lambda: nn.MaxPool2d(2, padding=2),
            r"MaxPool2d: padding must be an integer in \[0, kernel_size/2\]",
        ),
        (lambda: nn.Dropout(1.5), r"Dropout: p must be a probability"),
        (lambda: nn.Linear(0, 3), r"Linear: in_features must be an integer >= 1"),
        (lambda: nn.BatchNorm2d(3, momentum=2), r"BatchNorm2d: momentum"),
    ],
)
def test_constructor_rejects(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.array([0.0, 1.0, 2.0]), r"labels must be integer class indices, got dtype float64"),
        (
            np.array([0, 1, 10]),
            r"labels must lie in \[0, 10\) for logits of shape \(3, 10\); got values in \[0, 10\]",
        ),
        (np.array([-1, 1, 2]), r"labels must lie in \[0, 10\)"),
        (np.array([0, 1]), r"expected labels of shape \(3,\) for 3 logits, got \(2,\)"),
        (np.array([[0, 1, 2]]), r"expected labels of shape \(3,\)"),
    ],
)
def test_cross_entropy_rejects_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        nn.CrossEntropyLoss()(np.zeros((3, 10), np.float32), labels)


def test_residual_shape_mismatch_names_both_shapes():
    block = nn.Residual(nn.Conv2d(3, 4, 3, padding=1))
    with pytest.raises(
        ValueError, match=r"body output \(2, 4, 8, 8\) and shortcut output \(2, 3, 8, 8\)"
    ):
        block(X)


def test_summary_rejects_an_input_the_model_cannot_take():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 26 * 26, 3))
    with pytest.raises(
        ValueError, match=r"Conv2d: expected a \(C=1, H, W\) sample, got \(3, 28, 28\)"
    ):
        model.summary((3, 28, 28), print_fn=None)
    with pytest.raises(ValueError, match=r"Linear: expected a \(1352,\) sample, got \(1568,\)"):
        model.summary((1, 30, 30), print_fn=None)


def test_backward_before_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Conv2d(1, 1, 3).backward(np.zeros((1, 1, 1, 1), np.float32))
