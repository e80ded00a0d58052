"""Layers that Sequential runs as one step: Conv2d -> ReLU -> MaxPool2d(2) (the seed model's
block) through gpucnn.functional.conv2d_relu_maxpool_forward/backward.

The step is made by Sequential from its own layers, every forward pass: the Parameters are the
Conv2d's own objects, so optimizers, checkpoints and state_dict names do not change, and the
layers as written stay the model's children. It fuses only what matches exactly: a Conv2d, then
(in the order Sequential runs them, where a ReLU before a max pool runs after it) a
MaxPool2d(kernel_size=2, stride=2, padding=0) and a ReLU, nothing between them, on a backend
whose kernels module says FUSES_CONV_RELU_POOL (measured faster there), unless that backend
convolves this Conv2d directly (Conv2d.runs(): no GEMM output for the epilogue). A Winograd
conv fuses too: its output transform carries the epilogue (gpucnn.functional.winograd).
"""

from __future__ import annotations

from typing import Any

from gpucnn import functional as F
from gpucnn.backend import backend_of
from gpucnn.nn.activation import ReLU
from gpucnn.nn.conv import Conv2d
from gpucnn.nn.module import Module, Shape
from gpucnn.nn.pool import MaxPool2d


class ConvReLUPool(Module):
    """relu(maxpool2x2(conv(x))) as one step, for the Conv2d, MaxPool2d and ReLU it is given.

    Shape: (N, C, H, W) -> (N, F, OH // 2, OW // 2), OH the convolution's output height.

    Backward accumulates the gradients into the Conv2d's Parameters (as Conv2d.backward:
    frozen ones skipped) and returns dx (None when the Conv2d's ``input_grad`` is False).
    """

    def __init__(self, conv: Conv2d, pool: MaxPool2d, relu: ReLU) -> None:
        super().__init__()
        self.conv, self.pool, self.relu = conv, pool, relu

    def forward(self, x: Any) -> Any:
        conv = self.conv
        w, b = conv.weight_and_bias()
        y, self._cache = F.conv2d_relu_maxpool_forward(
            x, w, b, conv.stride, conv.pad, conv.algorithm
        )
        conv.forget()  # its own backward would find nothing of this pass: make it say so
        return y

    def backward(self, dy: Any) -> Any:
        return self.conv.backward_weight_bias(F.conv2d_relu_maxpool_backward, dy, self.kept())

    def output_shape(self, in_shape: Shape) -> Shape:
        return self.relu.output_shape(self.pool.output_shape(self.conv.output_shape(in_shape)))

    def flops(self, in_shape: Shape) -> int:
        mid = self.conv.output_shape(in_shape)
        pooled = self.pool.output_shape(mid)
        return self.conv.flops(in_shape) + self.pool.flops(mid) + self.relu.flops(pooled)


def fusable(conv: Module, pool: Module, relu: Module) -> bool:
    """Whether three layers, consecutive in run order, are exactly a Conv2d (one the backend
    does not convolve directly), a 2×2 stride-2 unpadded MaxPool2d and a ReLU, on a backend
    that fuses them."""
    if type(conv) is not Conv2d or type(pool) is not MaxPool2d or type(relu) is not ReLU:
        return False
    if (pool.kernel_size, pool.stride, pool.padding) != (2, 2, 0):
        return False
    be = backend_of(conv.weight.data)
    if conv.runs() == "direct":
        return False  # it makes no GEMM output (F, N, OH, OW) for the fused epilogue to read
    return bool(getattr(be.kernels, "FUSES_CONV_RELU_POOL", False))


def fuse_steps(order: list[tuple[str, Module]]) -> list[tuple[tuple[str, ...], Module]]:
    """Group (name, layer) in run order into steps: (names, layer) for a layer on its own, and
    ((conv, pool, relu names), ConvReLUPool) for three that ``fusable`` accepts."""
    steps: list[tuple[tuple[str, ...], Module]] = []
    i = 0
    while i < len(order):
        if i + 2 < len(order) and fusable(order[i][1], order[i + 1][1], order[i + 2][1]):
            names = tuple(name for name, _ in order[i : i + 3])
            steps.append((names, ConvReLUPool(order[i][1], order[i + 1][1], order[i + 2][1])))
            i += 3
        else:
            steps.append(((order[i][0],), order[i][1]))
            i += 1
    return steps
