"""The optimizer base: parameters, learning rate, and per-parameter state keyed by parameter."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from gpucnn.backend import backend_of, to_host
from gpucnn.nn.module import Parameter


class Optimizer:
    """Holds parameters and their state; subclasses implement ``_update(p, grad, state)``.

    Frozen parameters (``requires_grad=False``) and parameters without a gradient are skipped.
    """

    def __init__(self, params: Iterable[Parameter], lr: float) -> None:
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
        self.lr = float(lr)
        self.state: dict[Parameter, dict[str, Any]] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        for p in self.params:
            if p.requires_grad and p.grad is not None:
                self._update(p, p.grad, self.state.setdefault(p, {}))

    def _update(self, p: Parameter, grad: Any, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """lr and each parameter's state as host copies, keyed "<index>.<name>"."""
        out: dict[str, Any] = {"lr": np.float64(self.lr)}
        for i, p in enumerate(self.params):
            for name, value in self.state.get(p, {}).items():
                out[f"{i}.{name}"] = np.array(to_host(value))  # a copy: state mutates in place
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned, onto the parameters' current device."""
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


def check_range(owner: str, name: str, value: float, lo: float, hi: float | None = None) -> float:
    ok = value >= lo and (hi is None or value < hi)
    if not ok:
        rng = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
        raise ValueError(f"{owner}: {name} must be {rng}, got {value!r}")
    return float(value)
