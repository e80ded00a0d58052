"""Inverted dropout: zero each activation with probability p and scale survivors by 1/(1-p).

Train: y = x * m / (1 - p), m ~ Bernoulli(1 - p) elementwise, so E[y] = x.
Eval: y = x (the scaling at train time is what makes the identity correct here).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from gpucnn.backend import backend_of
from gpucnn.functional.checks import check_float


def check_p(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
    return float(p)


class DropoutCache(NamedTuple):
    """The mask of a forward pass, as what draws it (backward draws it again)."""

    p: float
    key: int
    start: int


def dropout_forward(
    x: Any, p: float, training: bool, key: int, start: int = 0
) -> tuple[Any, DropoutCache | None]:
    """Shape: any -> same. The cache is a DropoutCache, or None where no mask was applied
    (eval mode or p = 0: backward is then the identity).

    Args:
        x: input.
        p: probability of zeroing an element.
        training: apply dropout (True) or pass x through (False).
        key: a 64-bit integer; element i is kept when hash(key, start + i) clears p (see
            gpucnn.backend.formulas.dropout_draw), so the same key gives the same mask on every
            device and backward recomputes the mask instead of storing it.
        start: index of x's first element in the whole batch (a shard of it starts later).
    """
    check_float("Dropout", x)
    p = check_p(p)
    if not training or p == 0.0:
        return x, None
    return backend_of(x).kernels.dropout_fwd(x, p, key, start), DropoutCache(p, key, start)


def dropout_backward(dy: Any, cache: DropoutCache | None) -> Any:
    """dx = dy * m / (1 - p) with the forward pass's mask m; identity when there was none."""
    if cache is None:
        return dy
    return backend_of(dy).kernels.dropout_bwd(dy, cache.p, cache.key, cache.start)
