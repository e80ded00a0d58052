"""Optimizer behaviour beyond the numbers: frozen parameters, state, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import nn, optim
from gpucnn.backend import formulas
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


# device_state: the step count, lr and each step's constants in an array on the parameters'
# device (a CUDA graph's step needs them there); on the CPU the array is a NumPy array and the
# CPU twins of the kernels run. The numbers must be the eager path's, bit for bit.

DEVICE_STATE_CASES = {
    "adam-amsgrad": lambda ps, **kw: optim.Adam(ps, 1e-2, amsgrad=True, weight_decay=1e-3, **kw),
    "adam": lambda ps, **kw: optim.Adam(ps, 3e-3, betas=(0.8, 0.99), **kw),
    "sgd-nesterov": lambda ps, **kw: optim.SGD(ps, 0.1, momentum=0.9, nesterov=True, **kw),
    "sgd-dampening": lambda ps, **kw: optim.SGD(ps, 0.1, momentum=0.5, dampening=0.2, **kw),
    "sgd": lambda ps, **kw: optim.SGD(ps, 0.1, weight_decay=1e-2, **kw),
}


def _steps(layer, opt, n, lr_at=None, seed=0, first=0):
    """Steps ``first`` to ``first + n`` of a run whose batches come from ``seed``."""
    g = np.random.default_rng(seed)
    batches = [(g.standard_normal((4, 3)), g.standard_normal((4, 2))) for _ in range(first + n)]
    for s, (x, dy) in enumerate(batches[first:], start=first):
        if lr_at and s in lr_at:
            opt.lr = lr_at[s]
        layer.zero_grad()
        layer(x.astype(np.float32))
        layer.backward(dy.astype(np.float32))
        opt.step()


@pytest.mark.parametrize("name", sorted(DEVICE_STATE_CASES))
def test_device_state_steps_equal_eager_steps(name):
    make = DEVICE_STATE_CASES[name]
    eager, graphable = nn.Linear(3, 2, rng=0), nn.Linear(3, 2, rng=0)
    opt_e, opt_d = make(eager.parameters()), make(graphable.parameters(), device_state=True)
    lr_at = {2: opt_e.lr * 0.3, 4: opt_e.lr * 0.1}  # as a scheduler sets it between steps
    _steps(eager, opt_e, 6, lr_at)
    _steps(graphable, opt_d, 6, lr_at)
    for a, b in zip(eager.parameters(), graphable.parameters(), strict=True):
        np.testing.assert_array_equal(b.data, a.data)
    assert opt_d.step_state[formulas.STATE_T] == 6
    assert opt_d.step_state[formulas.STATE_LR] == opt_d.lr == opt_e.lr


@pytest.mark.parametrize("name", sorted(DEVICE_STATE_CASES))
def test_device_state_round_trips_through_state_dict(name):
    make = DEVICE_STATE_CASES[name]
    a, b = nn.Linear(3, 2, rng=0), nn.Linear(3, 2, rng=1)
    opt_a = make(a.parameters(), device_state=True)
    _steps(a, opt_a, 3)
    opt_b = make(b.parameters(), device_state=True)
    made = opt_b.step_state
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        pb.data[...] = pa.data
    opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.step_state is made  # written in place: a captured graph keeps reading it
    np.testing.assert_array_equal(opt_b.step_state, opt_a.step_state)
    _steps(a, opt_a, 2, seed=5)
    _steps(b, opt_b, 2, seed=5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        np.testing.assert_array_equal(pa.data, pb.data)


@pytest.mark.parametrize("name", sorted(DEVICE_STATE_CASES))
def test_switching_to_device_state_mid_run_continues_the_eager_run(name):
    make = DEVICE_STATE_CASES[name]
    eager, switched = nn.Linear(3, 2, rng=0), nn.Linear(3, 2, rng=0)
    opt_e, opt_s = make(eager.parameters()), make(switched.parameters())
    _steps(eager, opt_e, 5)
    _steps(switched, opt_s, 3)
    opt_s.use_device_state()
    _steps(switched, opt_s, 2, first=3)
    if name.startswith("adam"):  # (eager SGD counts no steps: its device count starts at 1)
        assert opt_s.step_state[formulas.STATE_T] == 5
    for a, b in zip(eager.parameters(), switched.parameters(), strict=True):
        np.testing.assert_array_equal(b.data, a.data)
