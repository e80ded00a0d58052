"""OneCycleLR: the 1cycle learning-rate policy (Smith & Topin 2017), stepped once per batch."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gpucnn.nn.module import Parameter
from gpucnn.optim.optimizer import Optimizer

ANNEAL_STRATEGIES = ("cos", "linear")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"OneCycleLR: {name} must be a positive integer, got {value!r}")
    return value


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"OneCycleLR: {name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"OneCycleLR: {name} must be a finite number > 0, got {value!r}")
    return float(value)


class OneCycleLR:
    """The learning rate rises from ``max_lr / div_factor`` to ``max_lr`` over the first
    ``pct_start`` of the steps, then falls to ``max_lr / div_factor / final_div_factor``;
    PyTorch's ``torch.optim.lr_scheduler.OneCycleLR``, value for value.

    Two phases (the default, fastai's): initial_lr -> max_lr over steps [0, pct_start * T - 1],
    then max_lr -> min_lr over the rest, up to step T - 1 (T = total_steps). Three phases (the
    paper's): initial_lr -> max_lr, back to initial_lr over as many steps, then down to min_lr.
    Within a phase from step s0 to s1, at step s, with p = (s - s0) / (s1 - s0):

        cos:    lr = end + (start - end) / 2 * (cos(pi * p) + 1)
        linear: lr = (end - start) * p + start

    Construction sets ``optimizer.lr`` to the value of step 0 (initial_lr); call :meth:`step`
    after each ``optimizer.step()``, at most ``total_steps`` times (as PyTorch, the last call
    sets the lr a further batch would use, extrapolated past the cycle's end: with "linear",
    below min_lr and usually below zero; no batch of the cycle uses it).

    gpucnn's optimizers hold one ``lr`` and no parameter groups, so ``max_lr`` is one number.
    PyTorch's ``cycle_momentum`` (on by default: SGD's momentum or Adam's beta1 cycled
    inversely to the lr between 0.95 and 0.85) is not implemented: the lr alone is scheduled,
    which is PyTorch's OneCycleLR with ``cycle_momentum=False``.

    Args:
        optimizer: whose ``lr`` is set at every step.
        max_lr: the peak learning rate.
        total_steps: steps in the cycle; or give ``epochs`` and ``steps_per_epoch``.
        epochs: with ``steps_per_epoch``: total_steps = epochs * steps_per_epoch.
        steps_per_epoch: batches per epoch (``len(train_loader)``).
        pct_start: the fraction of the steps spent raising the lr, in [0, 1].
        anneal_strategy: "cos" or "linear".
        div_factor: initial_lr = max_lr / div_factor.
        final_div_factor: min_lr = initial_lr / final_div_factor.
        three_phase: the paper's three phases instead of fastai's two.

    Raises:
        TypeError: ``optimizer`` is not a gpucnn Optimizer.
        ValueError: for a value PyTorch refuses (naming it), and, where PyTorch would divide
            by zero at some step, for a phase of zero steps (pct_start * total_steps == 1,
            pct_start == 1 with two phases); for three_phase with pct_start > 0.5, where the
            second phase would outlast the cycle and the lr never reach min_lr.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float,
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"OneCycleLR: {type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        if total_steps is not None:
            self.total_steps = _positive_int("total_steps", total_steps)
        elif epochs is not None and steps_per_epoch is not None:
            e = _positive_int("epochs", epochs)
            self.total_steps = e * _positive_int("steps_per_epoch", steps_per_epoch)
        else:
            raise ValueError(
                "OneCycleLR: give either total_steps or both epochs and steps_per_epoch"
            )
        if isinstance(pct_start, bool) or not (
            isinstance(pct_start, (int, float)) and 0.0 <= pct_start <= 1.0
        ):
            raise ValueError(f"OneCycleLR: pct_start must be a number in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ANNEAL_STRATEGIES:
            raise ValueError(
                f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}"
            )
        self.pct_start = float(pct_start)
        self.anneal_strategy = anneal_strategy
        self.three_phase = bool(three_phase)
        self.div_factor = _positive_float("div_factor", div_factor)
        self.final_div_factor = _positive_float("final_div_factor", final_div_factor)
        self.max_lr = _positive_float("max_lr", max_lr)
        self.initial_lr = self.max_lr / self.div_factor
        self.min_lr = self.initial_lr / self.final_div_factor
        self._phases = self._make_phases()
        self.last_epoch = 0  # PyTorch's name: the steps taken (batches, not epochs)
        self._last_lr = self._lr_at(0)
        self.optimizer.lr = self._last_lr

    def _make_phases(self) -> list[tuple[float, str, str]]:
        """(end_step, start_lr attribute, end_lr attribute) per phase, PyTorch's arithmetic."""
        t, p = self.total_steps, self.pct_start
        if self.three_phase:
            if p > 0.5:
                raise ValueError(
                    f"OneCycleLR: with three_phase, pct_start must be <= 0.5 (the first two "
                    f"phases take 2 * pct_start of the steps), got {p}"
                )
            phases = [
                (float(p * t) - 1, "initial_lr", "max_lr"),
                (float(2 * p * t) - 2, "max_lr", "initial_lr"),
                (t - 1, "initial_lr", "min_lr"),
            ]
        else:
            phases = [(float(p * t) - 1, "initial_lr", "max_lr"), (t - 1, "max_lr", "min_lr")]
        # a phase of no steps that some step falls in divides by zero (PyTorch raises
        # ZeroDivisionError then): the first at step 0, the last at step total_steps
        first_empty = phases[0][0] == 0.0
        last_empty = phases[-1][0] == phases[-2][0]
        if first_empty or last_empty:
            raise ValueError(
                f"OneCycleLR: the {'first' if first_empty else 'last'} phase of the cycle spans "
                f"no steps (pct_start {p}, total_steps {t}"
                f"{', three_phase' if self.three_phase else ''}); change pct_start or total_steps"
            )
        return phases

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _lr_at(self, step: int) -> float:
        start_step = 0.0
        for i, (end_step, lo, hi) in enumerate(self._phases):
            if step <= end_step or i == len(self._phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                return self._anneal(getattr(self, lo), getattr(self, hi), pct)
            start_step = end_step
        raise AssertionError("unreachable")

    def step(self) -> float:
        """Advance one batch and set the optimizer's lr; returns it.

        Raises:
            ValueError: the cycle's ``total_steps`` steps were all taken (as PyTorch; the
                schedule's state is left as it was).
        """
        step = self.last_epoch + 1
        if step > self.total_steps:
            raise ValueError(
                f"OneCycleLR: tried to step {step} times; the cycle has total_steps "
                f"{self.total_steps} (size it for the whole run: epochs * steps_per_epoch)"
            )
        lr = self._lr_at(step)
        self.last_epoch = step
        self._last_lr = lr
        self.optimizer.lr = lr
        return lr

    def get_last_lr(self) -> list[float]:
        """The lr the last step (or construction) set, as a one-item list (PyTorch's form)."""
        return [self._last_lr]

    def state_dict(self) -> dict[str, Any]:
        """The schedule and its position, all numbers (a checkpoint's callback state)."""
        return {
            "last_epoch": self.last_epoch,
            "total_steps": self.total_steps,
            "max_lr": self.max_lr,
            "initial_lr": self.initial_lr,
            "min_lr": self.min_lr,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "three_phase": self.three_phase,
            "anneal_cos": self.anneal_strategy == "cos",
            "last_lr": self._last_lr,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the schedule and its position (as PyTorch, the saved schedule replaces this
        one's settings). The optimizer's lr is not touched: restore the optimizer's state too
        (it holds the lr), or the lr of the next batch is this object's until it steps."""
        last_epoch, total = int(state["last_epoch"]), int(state["total_steps"])
        if not 0 <= last_epoch <= total:
            raise ValueError(f"OneCycleLR: last_epoch {last_epoch} is outside [0, {total}]")
        self.total_steps = total
        for name in ("max_lr", "initial_lr", "min_lr", "pct_start", "div_factor"):
            setattr(self, name, float(state[name]))
        self.final_div_factor = float(state["final_div_factor"])
        self.three_phase = bool(state["three_phase"])
        self.anneal_strategy = "cos" if bool(state["anneal_cos"]) else "linear"
        self._phases = self._make_phases()
        self.last_epoch = last_epoch
        self._last_lr = float(state["last_lr"])


def check_one_cycle(**settings: Any) -> None:
    """Raise what :class:`OneCycleLR` would for these settings (all its arguments but the
    optimizer), before there is an optimizer: a config or a callback checks them early."""
    from gpucnn.optim.sgd import SGD

    OneCycleLR(SGD([Parameter(np.zeros(1, np.float32))], lr=0.0), **settings)
