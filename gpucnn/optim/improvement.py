"""The one improvement test shared by ReduceLROnPlateau and EarlyStopping.

mode "min": lower is better; "max": higher is better. With threshold t:
    rel: min improves when  current < best * (1 - t);  max when current > best * (1 + t)
    abs: min improves when  current < best - t;        max when current > best + t
EarlyStopping's min_delta is the abs form; ReduceLROnPlateau defaults to rel with t = 1e-4
(PyTorch's rules). A NaN never improves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Improvement:
    """Decides whether a monitored value beats the best so far.

    Args:
        mode: "min" or "max".
        threshold: the margin t >= 0 a new value must beat the best by.
        threshold_mode: "rel" (a fraction of best) or "abs" (an absolute margin).
    """

    mode: str = "min"
    threshold: float = 0.0
    threshold_mode: str = "abs"

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {self.threshold_mode!r}")
        if not self.threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold!r}")

    @property
    def worst(self) -> float:
        """The starting 'best': anything finite beats it."""
        return math.inf if self.mode == "min" else -math.inf

    def __call__(self, current: float, best: float) -> bool:
        t = self.threshold
        if self.mode == "min":
            bound = best * (1 - t) if self.threshold_mode == "rel" else best - t
            return current < bound
        bound = best * (1 + t) if self.threshold_mode == "rel" else best + t
        return current > bound
