"""Adam (Kingma & Ba 2015) with AMSGrad (Reddi et al. 2018) and L2 weight decay, as PyTorch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gpucnn.backend import backend_of
from gpucnn.nn.module import Parameter
from gpucnn.optim.optimizer import Optimizer, check_range


class Adam(Optimizer):
    """At step t, for gradient g (plus weight_decay * p, the L2 form PyTorch's Adam uses):

        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g^2
        vmax = max(vmax, v)                       (amsgrad only; v below becomes vmax)
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    Args:
        params: the parameters to update.
        lr: learning rate.
        betas: (b1, b2), decay rates of the first and second moment estimates.
        eps: added to the denominator for stability.
        weight_decay: L2 penalty added to the gradient.
        amsgrad: keep the running maximum of v (the AMSGrad variant).
        device_state: keep the step count, lr and the constants of each step on the parameters'
            device (see gpucnn.optim.optimizer and ``use_device_state``): the same numbers,
            and nothing per step passed to a kernel, as a captured CUDA graph needs.
    """

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        device_state: bool = False,
    ) -> None:
        super().__init__(params, lr, device_state)
        b1, b2 = betas
        self.betas = (
            check_range("Adam", "beta1", b1, 0.0, 1.0),
            check_range("Adam", "beta2", b2, 0.0, 1.0),
        )
        self.eps = check_range("Adam", "eps", eps, 0.0)
        self.weight_decay = check_range("Adam", "weight_decay", weight_decay, 0.0)
        self.amsgrad = amsgrad

    def _init_state(self, w: Any, state: dict[str, Any]) -> None:
        xp = backend_of(w).xp
        state["step"] = 0
        state["exp_avg"] = xp.zeros_like(w)
        state["exp_avg_sq"] = xp.zeros_like(w)
        if self.amsgrad:
            state["max_exp_avg_sq"] = xp.zeros_like(w)

    def _update(self, p: Parameter, grad: Any, state: dict[str, Any]) -> None:
        w = p.data
        xp = backend_of(w).xp
        b1, b2 = self.betas
        if not state:
            self._init_state(w, state)
        state["step"] += 1
        t = state["step"]
        # one fused pass per parameter (a backend kernel) instead of a dozen array expressions
        backend_of(w).kernels.adam_update(
            w,
            xp.ascontiguousarray(grad, dtype=w.dtype),
            state["exp_avg"],
            state["exp_avg_sq"],
            state["max_exp_avg_sq"] if self.amsgrad else None,
            step_size=self.lr / (1 - b1**t),
            beta1=b1,
            beta2=b2,
            bias_correction2=1 - b2**t,
            eps=self.eps,
            weight_decay=self.weight_decay,
        )

    def _update_with_state(
        self, p: Parameter, grad: Any, state: dict[str, Any], step_state: Any
    ) -> None:
        w = p.data
        if "exp_avg" not in state:
            self._init_state(w, state)  # the base class counts state["step"]
        backend_of(w).kernels.adam_update_state(
            w,
            backend_of(w).xp.ascontiguousarray(grad, dtype=w.dtype),
            state["exp_avg"],
            state["exp_avg_sq"],
            state["max_exp_avg_sq"] if self.amsgrad else None,
            step_state,
        )

    def _hyperparameters(self) -> dict[str, float]:
        b1, b2 = self.betas
        return {"beta1": b1, "beta2": b2, "eps": self.eps, "weight_decay": self.weight_decay}
