"""ReLU, Tanh and Dropout layers."""

from __future__ import annotations

import math
from typing import Any

from gpucnn import functional as F
from gpucnn.nn import init
from gpucnn.nn.module import Module, Shape


class ReLU(Module):
    """y = max(x, 0). Shape: any -> same."""

    # monotone and exact on ties that matter: Sequential may run it after a following max pool
    commutes_with_max_pool = True

    def forward(self, x: Any) -> Any:
        y, self._cache = F.relu_forward(x)
        return y

    def backward(self, dy: Any) -> Any:
        return F.relu_backward(dy, self.kept())

    def flops(self, in_shape: Shape) -> int:
        return math.prod(in_shape)


class Tanh(Module):
    """y = tanh(x) (LeNet-5's squashing nonlinearity). Shape: any -> same."""

    def forward(self, x: Any) -> Any:
        y, self._cache = F.tanh_forward(x)
        return y

    def backward(self, dy: Any) -> Any:
        return F.tanh_backward(dy, self.kept())

    def flops(self, in_shape: Shape) -> int:
        return math.prod(in_shape)


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale the rest
    by 1/(1-p); in eval mode, the identity.

    Args:
        p: probability of zeroing an element, in [0, 1].
        rng: seed or Generator that hands out one mask key per step (seeded runs are
            reproducible, and draw the same masks on the CPU and the GPU; a checkpoint saves
            this generator, so a resumed run draws the masks it would have drawn).

    Shape: any -> same.
    """

    def __init__(self, p: float = 0.5, rng: init.RngLike = None) -> None:
        super().__init__()
        from gpucnn.functional.dropout import check_p

        self.p = check_p(p)
        self.rng = init.as_rng(rng)

    def mask_key(self, x: Any) -> tuple[int, int]:
        """(key, start) of this step's mask: one key per step from the host generator (the mask
        itself is drawn on x's device), x's elements numbered from ``start``."""
        return int(self.rng.integers(2**63)), 0

    def forward(self, x: Any) -> Any:
        key, start = self.mask_key(x) if self.training and self.p > 0 else (0, 0)
        y, self._cache = F.dropout_forward(x, self.p, self.training, key, start)
        return y

    def backward(self, dy: Any) -> Any:
        return F.dropout_backward(dy, self._cache)  # None: no mask was applied, the identity

    def extra_repr(self) -> str:
        return f"p={self.p}"
