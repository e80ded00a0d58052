"""Inverted dropout: zero each activation with probability p and scale survivors by 1/(1-p).

Train: y = x * m / (1 - p), m ~ Bernoulli(1 - p) elementwise, so E[y] = x.
Eval: y = x (the scaling at train time is what makes the identity correct here).
"""

from __future__ import annotations

from typing import Any

from gpucnn.backend import backend_of
from gpucnn.functional._checks import check_float


def check_p(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
    return float(p)


def dropout_forward(x: Any, p: float, training: bool, rng: Any) -> tuple[Any, Any]:
    """Shape: any -> same. The cache is the scaled mask (None in eval mode or when p = 0).

    Args:
        x: input.
        p: probability of zeroing an element.
        training: apply dropout (True) or pass x through (False).
        rng: the generator for the mask (numpy.random.Generator on the CPU).
    """
    check_float("Dropout", x)
    p = check_p(p)
    if not training or p == 0.0:
        return x, None
    xp = backend_of(x).xp
    if p == 1.0:
        scaled_mask = xp.zeros_like(x)
    else:
        keep = rng.random(x.shape, dtype=x.dtype) >= p
        scaled_mask = keep * x.dtype.type(1.0 / (1.0 - p))
    return x * scaled_mask, scaled_mask


def dropout_backward(dy: Any, scaled_mask: Any) -> Any:
    """dx = dy * m / (1 - p); identity when there was no mask."""
    return dy if scaled_mask is None else dy * scaled_mask
