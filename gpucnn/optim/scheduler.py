"""ReduceLROnPlateau: cut the learning rate when a monitored metric stops improving."""

from __future__ import annotations

from typing import Any

from gpucnn.optim.improvement import Improvement
from gpucnn.optim.optimizer import Optimizer, check_range


class ReduceLROnPlateau:
    """After more than ``patience`` epochs without improvement, lr <- max(lr * factor, min_lr),
    then wait ``cooldown`` epochs before counting again (PyTorch's rules).

    Args:
        optimizer: whose ``lr`` is reduced.
        mode: "min" (e.g. a loss) or "max" (e.g. an accuracy).
        factor: multiplier in (0, 1).
        patience: epochs without improvement tolerated before a cut.
        threshold: margin an improvement must clear (see Improvement).
        threshold_mode: "rel" or "abs".
        cooldown: epochs to wait after a cut before resuming normal operation.
        min_lr: lower bound on the learning rate.
        eps: a cut smaller than this is skipped.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor!r}")
        self.optimizer = optimizer
        self.improved = Improvement(mode, threshold, threshold_mode)
        self.factor = float(factor)
        self.patience = int(check_range("ReduceLROnPlateau", "patience", patience, 0))
        self.cooldown = int(check_range("ReduceLROnPlateau", "cooldown", cooldown, 0))
        self.min_lr = check_range("ReduceLROnPlateau", "min_lr", min_lr, 0.0)
        self.eps = float(eps)
        self.best = self.improved.worst
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def step(self, metric: float) -> bool:
        """Record one epoch's metric; returns True when the learning rate was cut."""
        current = float(metric)
        if self.improved(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
            old = self.optimizer.lr
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
                return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "num_bad_epochs": self.num_bad_epochs,
            "cooldown_counter": self.cooldown_counter,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])
