"""Weight initialisation.

The article's scheme (the seed model's default): conv weights ~ N(0, 0.01^2), linear weights
Xavier-uniform, biases 0. Kaiming-normal (He et al. 2015) is the ResNet default.

Fan-in and fan-out follow PyTorch: for a conv weight (F, C, k, k), fan_in = C*k*k and
fan_out = F*k*k; for a linear weight (out, in), fan_in = in and fan_out = out.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gpucnn.nn.module import Parameter

RngLike = np.random.Generator | int | None


def as_rng(rng: RngLike) -> np.random.Generator:
    """A Generator from a Generator, a seed, or None (fresh entropy)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fill(param: Parameter, values: np.ndarray) -> Parameter:
    param.data[...] = values
    return param


def normal_(param: Parameter, std: float, rng: RngLike = None) -> Parameter:
    """w ~ N(0, std^2)."""
    return _fill(param, as_rng(rng).normal(0.0, std, param.shape))


def xavier_uniform_(param: Parameter, rng: RngLike = None, gain: float = 1.0) -> Parameter:
    """w ~ U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    fan_in, fan_out = fans(param.shape)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _fill(param, as_rng(rng).uniform(-a, a, param.shape))


def kaiming_normal_(param: Parameter, rng: RngLike = None, mode: str = "fan_in") -> Parameter:
    """w ~ N(0, 2 / fan) for ReLU networks (He et al. 2015); mode "fan_in" or "fan_out"."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming_normal_: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fans(param.shape)
    std = math.sqrt(2.0 / (fan_in if mode == "fan_in" else fan_out))
    return _fill(param, as_rng(rng).normal(0.0, std, param.shape))


def zeros_(param: Parameter) -> Parameter:
    param.data[...] = 0
    return param


def ones_(param: Parameter) -> Parameter:
    param.data[...] = 1
    return param


def new_param(shape: tuple[int, ...], dtype: Any = np.float32) -> Parameter:
    return Parameter(np.zeros(shape, dtype=dtype))
