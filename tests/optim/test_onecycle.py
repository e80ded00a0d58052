"""OneCycleLR sets torch.optim.lr_scheduler.OneCycleLR's learning rates, step for step, and a
schedule restored from its state_dict continues exactly."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import optim
from gpucnn.nn import Parameter

torch = pytest.importorskip("torch")


def ours(total_steps=None, lr=0.5, **kw):
    opt = optim.SGD([Parameter(np.zeros(3, dtype=np.float32))], lr=lr)
    return opt, optim.OneCycleLR(opt, total_steps=total_steps, **kw)


def reference(total_steps=None, **kw):
    opt = torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.5)
    # gpucnn schedules the lr alone: PyTorch without momentum cycling
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, total_steps=total_steps, cycle_momentum=False, **kw
    )
    return opt, sched


SETTINGS = [
    {"max_lr": 0.01, "total_steps": 100},
    {"max_lr": 0.01, "total_steps": 100, "anneal_strategy": "linear"},
    {"max_lr": 3e-3, "total_steps": 97, "three_phase": True},
    {"max_lr": 3e-3, "total_steps": 97, "three_phase": True, "anneal_strategy": "linear"},
    {"max_lr": 0.1, "total_steps": 50, "pct_start": 0.1, "div_factor": 10.0},
    {"max_lr": 0.1, "total_steps": 61, "pct_start": 0.45, "final_div_factor": 100.0},
    {"max_lr": 5e-3, "epochs": 4, "steps_per_epoch": 23, "pct_start": 0.25},
    {"max_lr": 5e-3, "total_steps": 1},
    {"max_lr": 5e-3, "total_steps": 2, "pct_start": 0.0},
    {"max_lr": 5e-3, "total_steps": 7, "pct_start": 0.5, "three_phase": True},
]


@pytest.mark.parametrize("kw", SETTINGS)
def test_every_step_sets_pytorchs_lr(kw):
    opt, sched = ours(**kw)
    ropt, rsched = reference(**kw)
    total = sched.total_steps
    assert total == rsched.total_steps
    seen = [opt.lr]
    assert opt.lr == ropt.param_groups[0]["lr"]
    assert opt.lr == pytest.approx(kw["max_lr"] / kw.get("div_factor", 25.0)) or total < 3
    for i in range(total):
        ropt.step()
        assert sched.step() == opt.lr
        rsched.step()
        assert opt.lr == ropt.param_groups[0]["lr"], f"step {i + 1}"
        assert sched.get_last_lr() == rsched.get_last_lr()
        seen.append(opt.lr)
    assert max(seen) <= kw["max_lr"] * (1 + 1e-12)
    with pytest.raises(ValueError, match=f"tried to step {total + 1} times"):
        sched.step()
    with pytest.raises(ValueError, match=f"Tried to step {total + 1} times"):
        rsched.step()
    assert sched.last_epoch == total  # a refused step leaves the schedule as it was


def test_the_cycle_peaks_at_max_lr_and_ends_at_min_lr():
    opt, sched = ours(max_lr=0.01, total_steps=100, pct_start=0.2)
    lrs = [opt.lr] + [sched.step() for _ in range(99)]  # the lrs of the cycle's 100 batches
    assert lrs[0] == pytest.approx(0.01 / 25)
    assert int(np.argmax(lrs)) == 19 and lrs[19] == pytest.approx(0.01)
    assert lrs[-1] == pytest.approx(0.01 / 25 / 1e4)
    assert all(a >= b for a, b in zip(lrs[19:], lrs[20:], strict=False))


@pytest.mark.parametrize("kw", [SETTINGS[0], SETTINGS[3], SETTINGS[6]])
@pytest.mark.parametrize("at", [0, 1, 37])
def test_resume_from_state_dict_continues_exactly(kw, at):
    opt, sched = ours(**kw)
    straight = [sched.step() for _ in range(sched.total_steps)]

    opt, sched = ours(**kw)
    for _ in range(at):
        sched.step()
    state = {k: np.asarray(v) for k, v in sched.state_dict().items()}  # as a checkpoint holds it
    saved_lr = opt.lr
    assert all(v.dtype.kind in "biuf" for v in state.values())

    # a fresh optimizer and a schedule built with other settings: the saved one wins
    opt2, sched2 = ours(max_lr=1.0, total_steps=5, anneal_strategy="linear", three_phase=True)
    sched2.load_state_dict(state)
    opt2.lr = saved_lr  # what restoring the optimizer's state does
    assert sched2.get_last_lr() == [saved_lr]
    resumed = [sched2.step() for _ in range(sched2.total_steps - at)]
    assert resumed == straight[at:]
    with pytest.raises(ValueError, match="tried to step"):
        sched2.step()


def test_state_dict_matches_pytorchs_position():
    opt, sched = ours(max_lr=0.01, total_steps=20)
    ropt, rsched = reference(max_lr=0.01, total_steps=20)
    for _ in range(7):
        sched.step()
        ropt.step()
        rsched.step()
    assert sched.state_dict()["last_epoch"] == rsched.state_dict()["last_epoch"] == 7
    assert sched.state_dict()["last_lr"] == rsched.state_dict()["_last_lr"][0]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"max_lr": 0.01}, "either total_steps or both epochs and steps_per_epoch"),
        ({"max_lr": 0.01, "epochs": 3}, "either total_steps"),
        ({"max_lr": 0.01, "total_steps": 0}, "total_steps must be a positive integer"),
        ({"max_lr": 0.01, "total_steps": 2.5}, "total_steps must be a positive integer"),
        ({"max_lr": 0.01, "epochs": 0, "steps_per_epoch": 3}, "epochs must be a positive"),
        ({"max_lr": 0.01, "epochs": 2, "steps_per_epoch": -1}, "steps_per_epoch must be"),
        ({"max_lr": 0.01, "total_steps": 10, "pct_start": 1.5}, r"pct_start must be .* \[0, 1\]"),
        ({"max_lr": 0.01, "total_steps": 10, "anneal_strategy": "exp"}, "'cos' or 'linear'"),
        ({"max_lr": 0.0, "total_steps": 10}, "max_lr must be a finite number > 0"),
        ({"max_lr": float("nan"), "total_steps": 10}, "max_lr must be"),
        ({"max_lr": 0.01, "total_steps": 10, "div_factor": 0}, "div_factor must be"),
        ({"max_lr": 0.01, "total_steps": 10, "pct_start": 0.1}, "first phase .* spans no steps"),
        ({"max_lr": 0.01, "total_steps": 10, "pct_start": 1.0}, "last phase .* spans no steps"),
        (
            {"max_lr": 0.01, "total_steps": 10, "pct_start": 0.6, "three_phase": True},
            "pct_start must be <= 0.5",
        ),
    ],
)
def test_bad_settings_raise_naming_the_setting(kw, match):
    with pytest.raises(ValueError, match=match):
        ours(**kw)


def test_a_zero_length_phase_is_one_pytorch_cannot_step_through():
    # the settings refused above as "spans no steps" divide by zero in PyTorch
    with pytest.raises(ZeroDivisionError):
        reference(max_lr=0.01, total_steps=10, pct_start=0.1)
    ropt, rsched = reference(max_lr=0.01, total_steps=10, pct_start=1.0)
    with pytest.raises(ZeroDivisionError):
        for _ in range(10):
            ropt.step()
            rsched.step()


def test_needs_a_gpucnn_optimizer():
    with pytest.raises(TypeError, match="is not an Optimizer"):
        optim.OneCycleLR(object(), 0.01, total_steps=10)
