"""The optimizer base: parameters, learning rate, and per-parameter state keyed by parameter.

Two ways to run a step. By default (eager) the host computes each step's constants (the bias
corrections, the learning rate) and passes them to one update kernel per parameter. With
``device_state`` (``use_device_state()``) they live in a small array on the parameters' device
(``step_state``, laid out as gpucnn.backend.formulas.STATE_SIZE says): each step launches one
one-thread kernel that advances the step count and computes the constants there, then the
update kernels read them. Nothing that changes from step to step is then a launch argument, so
a step captured into a CUDA graph replays correctly; the numbers are the eager path's (the
constants are computed from the same float64 expressions and rounded the same way).

In device-state mode the step count is the optimizer's (every parameter that has a gradient
is updated at every step, as in a captured graph); each parameter's state still records its
own ``step``, which is what a checkpoint saves and what the device count is rebuilt from.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from gpucnn.backend import backend_of, formulas, is_device_array, to_host
from gpucnn.nn.module import Parameter


class Optimizer:
    """Holds parameters and their state; subclasses implement ``_update(p, grad, state)`` (the
    eager step), and ``_update_with_state(p, grad, state, step_state)`` and
    ``_hyperparameters()`` for the device-state step.

    Frozen parameters (``requires_grad=False``) and parameters without a gradient are skipped.
    """

    def __init__(self, params: Iterable[Parameter], lr: float, device_state: bool = False) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{type(self).__name__}: item {i} is {type(p).__name__}, not a Parameter "
                    "(pass model.parameters())"
                )
        if not lr >= 0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {lr!r}")
        self._step_state: Any = None  # made on first use, on the parameters' device
        self._t = 0  # steps taken in device-state mode: the device's count, known on the host
        self.device_state = False
        self.lr = float(lr)
        self.state: dict[Parameter, dict[str, Any]] = {}
        if device_state:
            self.use_device_state()

    @property
    def lr(self) -> float:
        """The learning rate. Setting it in device-state mode also writes the device array (an
        asynchronous write on the device's stream: no sync); reading it never touches the
        device (the host holds the value it last set)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = float(value)
        if self._step_state is not None:
            self._step_state[formulas.STATE_LR] = self._lr

    def use_device_state(self, on: bool = True) -> None:
        """Keep the step count, the learning rate and the other hyperparameters on the
        parameters' device from the next step on (or, with ``on=False``, go back to computing
        each step's constants on the host). Hyperparameters other than ``lr`` are read when
        ``step_state`` is made; switching mid-run continues from the steps already taken."""
        if on and not self.device_state:
            self._t = self._steps_taken()
        self.device_state = bool(on)
        self._step_state = None

    @property
    def step_state(self) -> Any:
        """The step-state array on the parameters' device (None in eager mode), made on first
        use: a CUDA graph captures its address, so it is then only ever written in place."""
        if not self.device_state:
            return None
        w = self.params[0].data
        if self._step_state is None or is_device_array(self._step_state) != is_device_array(w):
            self._step_state = backend_of(w).asarray(self._host_step_state())
        return self._step_state

    def _host_step_state(self) -> np.ndarray:
        return formulas.step_state(self._t, self._lr, **self._hyperparameters())

    def _steps_taken(self) -> int:
        """The step count a device-state run continues from: the largest parameter ``step``."""
        return max((s.get("step", 0) for s in self.state.values()), default=0)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        if self.device_state:
            self._step_on_device()
            return
        for p in self.params:
            if p.requires_grad and p.grad is not None:
                self._update(p, p.grad, self.state.setdefault(p, {}))

    def _step_on_device(self) -> None:
        todo = [p for p in self.params if p.requires_grad and p.grad is not None]
        if not todo:
            return
        step_state = self.step_state
        backend_of(step_state).kernels.optim_state_advance(step_state)
        for p in todo:
            self._update_with_state(p, p.grad, self.state.setdefault(p, {}), step_state)
        self.count_step(todo)

    def count_step(self, params: Iterable[Parameter]) -> None:
        """Count one device-state step on the host: the optimizer's count and the ``step`` of
        each of ``params`` (those it updated). A device-state step counts itself; a captured
        CUDA graph's launch runs the step without the host, which then counts it here."""
        self._t += 1
        for p in params:
            state = self.state.setdefault(p, {})
            state["step"] = state.get("step", 0) + 1

    def step_counts(self) -> tuple[int, dict[Parameter, Any]]:
        """The host's step counts (the optimizer's, and each parameter's ``step`` or None),
        for :meth:`set_step_counts` to put back."""
        return self._t, {p: s.get("step") for p, s in self.state.items()}

    def set_step_counts(self, counts: tuple[int, dict[Parameter, Any]]) -> None:
        """Put back what :meth:`step_counts` returned (e.g. after a step that was captured
        into a CUDA graph, which ran nothing)."""
        self._t, steps = counts
        for p, s in self.state.items():
            if steps.get(p) is None:
                s.pop("step", None)
            else:
                s["step"] = steps[p]

    def _update(self, p: Parameter, grad: Any, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _update_with_state(
        self, p: Parameter, grad: Any, state: dict[str, Any], step_state: Any
    ) -> None:
        raise NotImplementedError

    def _hyperparameters(self) -> dict[str, float]:
        """The keyword arguments of gpucnn.backend.formulas.step_state besides t and lr."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """lr and each parameter's state as host copies, keyed "<index>.<name>" (in
        device-state mode each parameter's ``step`` too, from which the device array is
        rebuilt exactly)."""
        out: dict[str, Any] = {"lr": np.float64(self.lr)}
        for i, p in enumerate(self.params):
            for name, value in self.state.get(p, {}).items():
                out[f"{i}.{name}"] = np.array(to_host(value))  # a copy: state mutates in place
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned, onto the parameters' current device (in
        device-state mode the step-state array too, in place when it exists)."""
        self.lr = float(state["lr"])
        self.state = {}
        for key, value in state.items():
            if key == "lr":
                continue
            idx, name = key.split(".", 1)
            p = self.params[int(idx)]
            value = np.asarray(value)
            if value.ndim:
                value = backend_of(p.data).xp.array(value, dtype=p.data.dtype)  # owns its memory
            else:
                value = value.item()
            self.state.setdefault(p, {})[name] = value
        if self.device_state:
            self._t = self._steps_taken()
            if self._step_state is not None:  # in place: a captured graph reads this array
                backend = backend_of(self._step_state)
                backend.xp.copyto(self._step_state, backend.asarray(self._host_step_state()))


def check_range(owner: str, name: str, value: float, lo: float, hi: float | None = None) -> float:
    ok = value >= lo and (hi is None or value < hi)
    if not ok:
        rng = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
        raise ValueError(f"{owner}: {name} must be {rng}, got {value!r}")
    return float(value)
