"""Conv2d: the layer that owns a bank of filters and calls gpucnn.functional.conv."""

from __future__ import annotations

from typing import Any

from gpucnn import functional as F
from gpucnn.backend import backend_of
from gpucnn.functional.checks import check_positive, window_out_size
from gpucnn.nn import init
from gpucnn.nn.module import Module, Shape


class Conv2d(Module):
    """2-D convolution with F = out_channels square filters shared over every position.

    Args:
        in_channels: C, channels of the input.
        out_channels: F, number of filters (channels of the output).
        kernel_size: k, the filters are k×k.
        stride: S >= 1.
        padding: P as an int, "same" (P = (k-1)/2; stride 1, odd k) or "valid" (P = 0).
        bias: learn a per-filter bias.
        rng: seed or Generator for the initial weights ~ N(0, 0.01^2) (the article's init).
        algorithm: how the convolution is computed: "auto" (the backend's measured choice
            for this shape), "im2col" (columns and one GEMM), "direct" (loops, no columns) or
            "winograd" (3×3 stride 1: Winograd's F(m×m, 3×3), fewer multiplications). They
            agree up to rounding; ``repr`` says which one runs.

    Shape:
        (N, C, H, W) -> (N, F, OH, OW), OH = floor((H - k + 2P) / S) + 1, likewise OW.

    Attributes:
        input_grad: compute dx in backward (default). A network's first layer sets it False:
            nothing needs the gradient of the images, so backward skips that GEMM and col2im
            and returns None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | str = 0,
        bias: bool = True,
        rng: init.RngLike = None,
        algorithm: str = "auto",
    ) -> None:
        super().__init__()
        self.in_channels = check_positive("Conv2d", "in_channels", in_channels)
        self.out_channels = check_positive("Conv2d", "out_channels", out_channels)
        self.kernel_size = check_positive("Conv2d", "kernel_size", kernel_size)
        self.stride = check_positive("Conv2d", "stride", stride)
        self.padding = padding
        self.pad = F.resolve_padding("Conv2d", padding, self.kernel_size, self.stride)
        k = self.kernel_size
        self.weight = init.normal_(init.new_param((out_channels, in_channels, k, k)), 0.01, rng)
        self.bias = init.new_param((out_channels,)) if bias else None
        self.algorithm = algorithm
        self.runs()  # an unknown algorithm, or winograd for another shape, fails here

    def forward(self, x: Any) -> Any:
        w, b = self.weight_and_bias()
        y, self._cache = F.conv2d_forward(x, w, b, self.stride, self.pad, self.algorithm)
        return y

    def runs(self) -> str:
        """The algorithm this layer's forward runs on its parameters' device: "im2col",
        "direct" or "winograd"."""
        be = backend_of(self.weight.data)
        k = self.kernel_size
        return F.conv_algorithm(be, self.in_channels, k, self.stride, self.pad, self.algorithm)

    def backward(self, dy: Any) -> Any:
        return self.backward_weight_bias(F.conv2d_backward, dy, self.kept())

    def output_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 3 or in_shape[0] != self.in_channels:
            raise ValueError(
                f"Conv2d: expected a (C={self.in_channels}, H, W) sample, got {tuple(in_shape)}"
            )
        oh, ow = window_out_size("Conv2d", in_shape, self.kernel_size, self.stride, self.pad)
        return (self.out_channels, oh, ow)

    def flops(self, in_shape: Shape) -> int:
        f, oh, ow = self.output_shape(in_shape)
        return 2 * self.in_channels * self.kernel_size**2 * f * oh * ow

    def dense_equivalent(self, in_shape: Shape) -> int:
        c, h, w = in_shape
        f, oh, ow = self.output_shape(in_shape)
        return (c * h * w) * (f * oh * ow) + f * oh * ow

    def summary_rows(self, in_shape: Shape, name: str) -> tuple[list[tuple], Shape]:
        rows, out = super().summary_rows(in_shape, name)
        first = rows[0]
        return [(first[0], f"Conv2d [{self.algorithm_note()}]", *first[2:])], out

    def algorithm_note(self) -> str:
        """What ``repr`` and ``summary`` say this layer runs, e.g. "winograd F(2x2,3x3)"."""
        return F.describe(self.runs(), backend_of(self.weight.data))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding!r}, bias={self.bias is not None}, "
            f"runs={self.algorithm_note()!r}"
        )
