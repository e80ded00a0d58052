"""Pooling layers: MaxPool2d, AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d."""

from __future__ import annotations

import math
from typing import Any

from gpucnn import functional as F
from gpucnn.functional.checks import check_positive, window_out_size
from gpucnn.nn.module import Module, Shape


class _Pool2d(Module):
    name = "Pool2d"

    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0) -> None:
        super().__init__()
        self.kernel_size = check_positive(self.name, "kernel_size", kernel_size)
        self.stride = (
            self.kernel_size if stride is None else check_positive(self.name, "stride", stride)
        )
        if (
            isinstance(padding, bool)
            or not isinstance(padding, int)
            or not (0 <= 2 * padding <= self.kernel_size)
        ):
            raise ValueError(
                f"{self.name}: padding must be an integer in [0, kernel_size/2], got {padding!r}"
            )
        self.padding = padding

    def output_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 3:
            raise ValueError(f"{self.name}: expected a (C, H, W) sample, got {tuple(in_shape)}")
        oh, ow = window_out_size(self.name, in_shape, self.kernel_size, self.stride, self.padding)
        return (in_shape[0], oh, ow)

    def flops(self, in_shape: Shape) -> int:
        return math.prod(self.output_shape(in_shape)) * self.kernel_size**2

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Max over k×k windows (stride defaults to k).

    Shape: (N, C, H, W) -> (N, C, OH, OW), OH = floor((H - k + 2P) / S) + 1.
    """

    name = "MaxPool2d"
    is_max_pool = True

    def forward(self, x: Any) -> Any:
        y, self._cache = F.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return y

    def backward(self, dy: Any) -> Any:
        return F.maxpool2d_backward(dy, self.kept())


class AvgPool2d(_Pool2d):
    """Mean over k×k windows (stride defaults to k; padded zeros are counted).

    Shape: (N, C, H, W) -> (N, C, OH, OW), OH = floor((H - k + 2P) / S) + 1.
    """

    name = "AvgPool2d"

    def forward(self, x: Any) -> Any:
        y, self._cache = F.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return y

    def backward(self, dy: Any) -> Any:
        return F.avgpool2d_backward(dy, self.kept())


class GlobalAvgPool2d(Module):
    """Mean of each channel's whole plane. Shape: (N, C, H, W) -> (N, C)."""

    def forward(self, x: Any) -> Any:
        y, self._cache = F.global_avgpool2d_forward(x)
        return y

    def backward(self, dy: Any) -> Any:
        return F.global_avgpool2d_backward(dy, self.kept())

    def output_shape(self, in_shape: Shape) -> Shape:
        return (in_shape[0],)

    def flops(self, in_shape: Shape) -> int:
        return math.prod(in_shape)


class GlobalMaxPool2d(Module):
    """Max of each channel's whole plane. Shape: (N, C, H, W) -> (N, C)."""

    def forward(self, x: Any) -> Any:
        y, self._cache = F.global_maxpool2d_forward(x)
        return y

    def backward(self, dy: Any) -> Any:
        return F.global_maxpool2d_backward(dy, self.kept())

    def output_shape(self, in_shape: Shape) -> Shape:
        return (in_shape[0],)

    def flops(self, in_shape: Shape) -> int:
        return math.prod(in_shape)
