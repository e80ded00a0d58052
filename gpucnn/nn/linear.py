"""Linear (fully connected) layer, Flatten between convs and linears."""

from __future__ import annotations

import math
from typing import Any

from gpucnn import functional as F
from gpucnn.functional.checks import check_positive, check_rank
from gpucnn.nn import init
from gpucnn.nn.module import Module, Shape


class Linear(Module):
    """y = x W^T + b.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias.
        rng: seed or Generator for the Xavier-uniform initial weights.

    Shape:
        (N, in_features) -> (N, out_features); W is (out_features, in_features).

    Attributes:
        input_grad: compute dx in backward (default); False skips it and returns None.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, rng: init.RngLike = None
    ) -> None:
        super().__init__()
        self.in_features = check_positive("Linear", "in_features", in_features)
        self.out_features = check_positive("Linear", "out_features", out_features)
        self.weight = init.xavier_uniform_(init.new_param((out_features, in_features)), rng)
        self.bias = init.new_param((out_features,)) if bias else None

    def forward(self, x: Any) -> Any:
        y, self._cache = F.linear_forward(x, *self.weight_and_bias())
        return y

    def backward(self, dy: Any) -> Any:
        return self.backward_weight_bias(F.linear_backward, dy, self.kept())

    def output_shape(self, in_shape: Shape) -> Shape:
        if tuple(in_shape) != (self.in_features,):
            raise ValueError(
                f"Linear: expected a ({self.in_features},) sample, got {tuple(in_shape)}"
            )
        return (self.out_features,)

    def flops(self, in_shape: Shape) -> int:
        return 2 * self.in_features * self.out_features

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Flatten(Module):
    """Shape: (N, d1, d2, ...) -> (N, d1*d2*...)."""

    def forward(self, x: Any) -> Any:
        if getattr(x, "ndim", 0) < 1:
            check_rank("Flatten", x, 2, "(N, ...)")
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: Any) -> Any:
        return dy.reshape(self._shape)

    def output_shape(self, in_shape: Shape) -> Shape:
        return (math.prod(in_shape),)
