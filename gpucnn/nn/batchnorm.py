"""BatchNorm2d: per-channel normalisation with learned scale and shift."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gpucnn import functional as F
from gpucnn.functional.checks import check_positive
from gpucnn.nn import init
from gpucnn.nn.module import Module, Shape


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) for each channel (see gpucnn.functional.batchnorm).

    Training normalises with the batch's mean and biased variance and updates the running
    statistics (the unbiased variance goes into running_var, as in PyTorch); eval mode
    normalises with the running statistics.

    Args:
        num_features: C.
        eps: added to the variance before the square root.
        momentum: weight of the current batch in the running statistics.

    Shape: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = check_positive("BatchNorm2d", "num_features", num_features)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm2d: momentum must be in [0, 1], got {momentum!r}")
        if eps <= 0:
            raise ValueError(f"BatchNorm2d: eps must be > 0, got {eps!r}")
        self.eps, self.momentum = float(eps), float(momentum)
        self.weight = init.ones_(init.new_param((num_features,)))
        self.bias = init.new_param((num_features,))
        self.register_buffer("running_mean", np.zeros(num_features, dtype=np.float32))
        self.register_buffer("running_var", np.ones(num_features, dtype=np.float32))

    def forward(self, x: Any) -> Any:
        y, self._cache = F.batchnorm2d_forward(
            x,
            self.weight.data,
            self.bias.data,
            self.running_mean,
            self.running_var,
            self.training,
            self.momentum,
            self.eps,
        )
        return y

    def backward(self, dy: Any) -> Any:
        dx, dgamma, dbeta = F.batchnorm2d_backward(dy, self.kept())
        self.weight.accumulate(dgamma)
        self.bias.accumulate(dbeta)
        return dx

    def output_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 3 or in_shape[0] != self.num_features:
            raise ValueError(
                f"BatchNorm2d: expected a (C={self.num_features}, H, W) sample, "
                f"got {tuple(in_shape)}"
            )
        return in_shape

    def flops(self, in_shape: Shape) -> int:
        return 4 * math.prod(in_shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
