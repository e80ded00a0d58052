"""Optimizer behaviour beyond the numbers: frozen parameters, state, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import nn, optim
from gpucnn.optim import Improvement


def _layer():
    layer = nn.Linear(3, 2, rng=0)
    layer(np.ones((4, 3), np.float32))
    layer.backward(np.ones((4, 2), np.float32))
    return layer


@pytest.mark.parametrize(
    "make",
    [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), lambda ps: optim.Adam(ps, amsgrad=True)],
)
def test_frozen_parameters_get_no_gradient_and_are_not_updated(make):
    layer = nn.Linear(3, 2, rng=0)
    layer.weight.requires_grad = False
    before = layer.weight.data.copy()
    opt = make(layer.parameters())
    layer(np.ones((4, 3), np.float32))
    layer.backward(np.ones((4, 2), np.float32))
    assert layer.weight.grad is None
    opt.step()
    np.testing.assert_array_equal(layer.weight.data, before)
    assert layer.weight not in opt.state
    assert layer.bias in opt.state


def test_state_dict_round_trip_continues_identically():
    a, b = _layer(), _layer()
    opt_a = optim.Adam(a.parameters(), amsgrad=True, weight_decay=1e-3)
    opt_a.step()
    opt_b = optim.Adam(b.parameters(), amsgrad=True, weight_decay=1e-3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        pb.data[...] = pa.data
    opt_b.load_state_dict(opt_a.state_dict())
    opt_a.step()
    opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        np.testing.assert_array_equal(pa.data, pb.data)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda ps: optim.SGD(ps, lr=-1), "lr must be >= 0"),
        (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5), "momentum"),
        (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), "nesterov"),
        (lambda ps: optim.Adam(ps, betas=(1.0, 0.999)), "beta1"),
        (lambda ps: optim.Adam(ps, weight_decay=-1), "weight_decay"),
        (lambda ps: optim.Adam([]), "empty parameter list"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make(_layer().parameters())


def test_passing_a_module_instead_of_parameters_is_a_clear_error():
    with pytest.raises(TypeError, match="model.parameters"):
        optim.SGD([nn.ReLU()], lr=0.1)


@pytest.mark.parametrize(
    ("imp", "current", "best", "expected"),
    [
        (Improvement("min", 0.0, "abs"), 0.9, 1.0, True),
        (Improvement("min", 0.2, "abs"), 0.9, 1.0, False),  # must beat best by min_delta
        (Improvement("min", 0.05, "rel"), 0.94, 1.0, True),
        (Improvement("max", 0.0, "abs"), 0.9, 1.0, False),
        (Improvement("max", 0.1, "rel"), 1.11, 1.0, True),
        (Improvement("min"), float("nan"), 1.0, False),
        (Improvement("min"), 5.0, Improvement("min").worst, True),
    ],
)
def test_improvement(imp, current, best, expected):
    assert imp(current, best) is expected


def test_improvement_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        Improvement("lowest")
