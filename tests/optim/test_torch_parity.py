"""SGD, Adam and ReduceLROnPlateau give torch.optim's numbers for the same gradients."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import optim
from gpucnn.nn import Parameter

torch = pytest.importorskip("torch")


def run_both(make_ours, make_ref, steps=6):
    g = np.random.default_rng(0)
    shapes = [(3, 4), (5,), (2, 1, 3, 3)]
    ours = [Parameter(g.standard_normal(s).astype(np.float32)) for s in shapes]
    ref = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    opt, ropt = make_ours(ours), make_ref(ref)
    for _ in range(steps):
        for p, r in zip(ours, ref, strict=True):
            grad = g.standard_normal(p.shape).astype(np.float32)
            p.grad = grad.copy()
            r.grad = torch.tensor(grad)
        opt.step()
        ropt.step()
    for p, r in zip(ours, ref, strict=True):
        np.testing.assert_allclose(p.data, r.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"momentum": 0.9},
        {"momentum": 0.9, "weight_decay": 1e-2},
        {"momentum": 0.8, "nesterov": True},
        {"momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-3},
    ],
)
def test_sgd(kw):
    run_both(lambda ps: optim.SGD(ps, lr=0.05, **kw), lambda ps: torch.optim.SGD(ps, lr=0.05, **kw))


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"amsgrad": True},
        {"weight_decay": 1e-2},
        {"amsgrad": True, "weight_decay": 1e-5, "betas": (0.8, 0.99), "eps": 1e-6},
    ],
)
def test_adam(kw):
    run_both(
        lambda ps: optim.Adam(ps, lr=1e-2, **kw),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, **kw),
        steps=10,
    )


@pytest.mark.parametrize(
    "kw",
    [
        {"patience": 2, "factor": 0.5},
        {"patience": 0, "factor": 0.1, "cooldown": 2},
        {"patience": 1, "factor": 0.5, "min_lr": 0.02, "threshold_mode": "abs", "threshold": 0.05},
        {"mode": "max", "patience": 1, "factor": 0.3},
    ],
)
def test_reduce_lr_on_plateau(kw):
    metrics = [1.0, 0.9, 0.95, 0.95, 0.96, 0.89, 0.899, 0.9, 0.9, 0.91, 0.5, 0.6, 0.7, 0.8, 0.9]
    p = Parameter(np.zeros(1, np.float32))
    opt = optim.SGD([p], lr=0.1)
    sched = optim.ReduceLROnPlateau(opt, **kw)
    ropt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    rsched = torch.optim.lr_scheduler.ReduceLROnPlateau(ropt, **kw)
    lrs, rlrs = [], []
    for m in metrics:
        sched.step(m)
        rsched.step(m)
        lrs.append(opt.lr)
        rlrs.append(ropt.param_groups[0]["lr"])
    np.testing.assert_allclose(lrs, rlrs, rtol=1e-12)
    assert min(lrs) < 0.1  # the sequence does trigger cuts
