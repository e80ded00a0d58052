"""Stochastic gradient descent with momentum and weight decay (PyTorch's formulation)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gpucnn.backend import backend_of
from gpucnn.nn.module import Parameter
from gpucnn.optim.optimizer import Optimizer, check_range


class SGD(Optimizer):
    """g = grad + weight_decay * p;  v = momentum * v + (1 - dampening) * g (v = g at step 1);
    p -= lr * (g + momentum * v if nesterov else v)   (v = g without momentum).

    Args:
        params: the parameters to update.
        lr: learning rate.
        momentum: factor mu >= 0.
        weight_decay: L2 penalty added to the gradient.
        dampening: damping of the momentum.
        nesterov: use Nesterov momentum.
        device_state: keep the step count, lr and the other constants on the parameters'
            device (see gpucnn.optim.optimizer and ``use_device_state``). The momentum buffer
            then starts at zero and takes the gradient at the optimizer's first step; a
            parameter first updated later starts it at (1 - dampening) * gradient.
    """

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        device_state: bool = False,
    ) -> None:
        super().__init__(params, lr, device_state)
        self.momentum = check_range("SGD", "momentum", momentum, 0.0)
        self.weight_decay = check_range("SGD", "weight_decay", weight_decay, 0.0)
        self.dampening = float(dampening)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening 0")
        self.nesterov = nesterov

    def _update(self, p: Parameter, grad: Any, state: dict[str, Any]) -> None:
        w = p.data
        xp = backend_of(w).xp
        first = self.momentum != 0 and "momentum_buffer" not in state
        if first:
            state["momentum_buffer"] = xp.empty_like(w)
        backend_of(w).kernels.sgd_update(  # one fused pass per parameter
            w,
            xp.ascontiguousarray(grad, dtype=w.dtype),
            state.get("momentum_buffer"),
            first=first,
            lr=self.lr,
            momentum=self.momentum,
            dampening=self.dampening,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
        )

    def _update_with_state(
        self, p: Parameter, grad: Any, state: dict[str, Any], step_state: Any
    ) -> None:
        w = p.data
        xp = backend_of(w).xp
        if self.momentum != 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = xp.zeros_like(w)
        backend_of(w).kernels.sgd_update_state(
            w, xp.ascontiguousarray(grad, dtype=w.dtype), state.get("momentum_buffer"), step_state
        )

    def _hyperparameters(self) -> dict[str, float]:
        return {
            "momentum": self.momentum,
            "dampening": self.dampening,
            "weight_decay": self.weight_decay,
            "nesterov": self.nesterov,
        }

    def _steps_taken(self) -> int:
        # the eager path counts no steps: a momentum buffer says the first step is behind us
        started = any("momentum_buffer" in s for s in self.state.values())
        return max(super()._steps_taken(), int(started))
