"""The captured step's check against the eager step (gpucnn.train.graph_check): its stated
tolerances, on host arrays (the simulator runs it inside real graph fits:
tests/backend/sim/test_graph_step.py and test_graph_check.py)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from gpucnn.backend import CPU
from gpucnn.train import graph_check

FIT = types.SimpleNamespace(backend=CPU)


def _case(rows=64):
    """A step of two parameters (w moves by up to 1e-2, the bias by up to 1e-3), a buffer, the
    step records (loss 2.0, norm 3.0 at index 1) and the correct count: (arrays, before)."""
    g = np.random.default_rng(0)
    w0, b0 = g.standard_normal((4, 3)), g.standard_normal(3)
    w1, b1 = w0 + 1e-2 * g.uniform(-1, 1, w0.shape), b0 + 1e-3 * g.uniform(-1, 1, 3)
    stats = np.zeros((2, 3))
    stats[:, 1] = 2.0, 3.0
    arrays = [
        ("parameter w", w1), ("parameter b", b1), ("buffer running_var", np.ones(3)),
        ("step records", stats), ("correct count", np.array(40.0)),
    ]  # fmt: skip
    before = [w0, b0, np.ones(3), np.zeros((2, 3)), np.array(0.0)]
    return arrays, before


def _check(graph, eager, before, grads=None, rows=64):
    grads = grads or ([np.ones((4, 3)), np.ones(3)], [np.ones((4, 3)), np.ones(3)])
    live = [(name, value) for (name, _), value in zip(eager, graph, strict=True)]
    return graph_check.compare(FIT, live, before, [v for _, v in eager], grads, 1, rows)


def test_the_same_step_agrees_and_says_so():
    arrays, before = _case()
    result = _check([v.copy() for _, v in arrays], arrays, before)
    assert result.ok
    assert result.line().startswith("the captured step (batch 64) agrees with the eager step")
    assert len(result.differences) == 2 + 1 + 3  # parameters, buffer, loss, norm, correct


@pytest.mark.parametrize(
    ("what", "change", "ok"),
    [
        ("parameter w", 0.5e-3, True),  # times its largest change: 1e-3 of that is allowed
        ("parameter w", 2e-3, False),
        ("loss", 1e-4, True),  # 1e-4 of max(1, loss 2.0) is 2e-4
        ("loss", 3e-4, False),
        ("correct", 1, True),  # one image in a hundred, at least one
        ("correct", 2, False),
    ],
)
def test_each_quantity_is_held_to_its_stated_tolerance(what, change, ok):
    arrays, before = _case()
    graph = [v.copy() for _, v in arrays]
    if what == "parameter w":
        graph[0][0, 0] += change * np.abs(arrays[0][1] - before[0]).max()
    elif what == "loss":
        graph[3][0, 1] += change
    else:
        graph[4] += change
    result = _check(graph, arrays, before)
    assert result.ok is ok
    if not ok:
        line = result.line()
        name = {"parameter w": "parameter w", "loss": "the loss", "correct": "the correct count"}
        assert line.startswith(
            f"the captured step (batch 64) disagrees with the eager step: {name[what]} differs by "
        )
        assert " is allowed (" in line


def test_a_parameter_whose_gradient_is_rounding_noise_is_held_to_its_gradient():
    """A conv bias ahead of BatchNorm: its gradient is 0 in exact arithmetic, so Adam steps it
    by the noise's sign, which two summation orders need not share."""
    arrays, before = _case()
    graph = [v.copy() for _, v in arrays]
    graph[1] = before[1] - (arrays[1][1] - before[1])  # the bias stepped the other way
    noise = ([np.ones((4, 3)), np.full(3, 2e-7)], [np.ones((4, 3)), np.full(3, -3e-7)])
    assert _check(graph, arrays, before, noise).ok
    real = ([np.ones((4, 3)), np.full(3, 0.5)], [np.ones((4, 3)), np.full(3, 0.5)])
    result = _check(graph, arrays, before, real)
    assert not result.ok and result.worst.what == "parameter b"
    wrong_grad = ([np.ones((4, 3)), np.full(3, 1e-3)], [np.ones((4, 3)), np.full(3, 1e-7)])
    result = _check(graph, arrays, before, wrong_grad)
    assert not result.ok and result.worst.what == "parameter b (its gradient)"


def test_a_frozen_parameter_must_not_move_and_nan_is_never_agreement():
    arrays, before = _case()
    arrays[0] = ("parameter w", before[0].copy())  # frozen: the eager step left it
    graph = [v.copy() for _, v in arrays]
    graph[0][1, 1] += 1e-5
    assert not _check(graph, arrays, before).ok
    graph = [v.copy() for _, v in arrays]
    graph[3][0, 1] = np.nan
    result = _check(graph, arrays, before)
    assert not result.ok and result.worst.what == "the loss"
