"""Stateless math: ``op_forward(...) -> (y, cache)`` and ``op_backward(dy, cache) -> grads``.

Each op validates its input, finds the backend from its arrays and calls that backend's
kernels for the window work; elementwise math is written once against the array module ``xp``.

A cache is a NamedTuple of its op, one type per algorithm where an op has several
(conv.Im2colCache, conv.DirectCache, winograd.WinogradCache; fused.ConvReluPoolCache,
winograd.WinogradReluPoolCache): each field keeps one meaning, and a backward reads it by
name (``cache.cols``). A convolution's cache says which algorithm ran (``cache.algorithm``).
Under gpucnn.no_grad() a forward returns None for its cache.
"""

from gpucnn.functional.activation import (
    log_softmax,
    relu_backward,
    relu_forward,
    softmax,
    tanh_backward,
    tanh_forward,
)
from gpucnn.functional.batchnorm import batchnorm2d_backward, batchnorm2d_forward
from gpucnn.functional.conv import (
    ALGORITHMS,
    conv2d_backward,
    conv2d_forward,
    conv_algorithm,
    describe,
    goes_direct,
    resolve_padding,
    winograd_tile,
)
from gpucnn.functional.dropout import dropout_backward, dropout_forward
from gpucnn.functional.fused import conv2d_relu_maxpool_backward, conv2d_relu_maxpool_forward
from gpucnn.functional.linear import linear_backward, linear_forward
from gpucnn.functional.loss import cross_entropy_backward, cross_entropy_forward
from gpucnn.functional.pool import (
    avgpool2d_backward,
    avgpool2d_forward,
    global_avgpool2d_backward,
    global_avgpool2d_forward,
    global_maxpool2d_backward,
    global_maxpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)

__all__ = [
    "ALGORITHMS",
    "avgpool2d_backward",
    "avgpool2d_forward",
    "batchnorm2d_backward",
    "batchnorm2d_forward",
    "conv2d_backward",
    "conv2d_forward",
    "conv_algorithm",
    "describe",
    "goes_direct",
    "winograd_tile",
    "conv2d_relu_maxpool_backward",
    "conv2d_relu_maxpool_forward",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "dropout_backward",
    "dropout_forward",
    "global_avgpool2d_backward",
    "global_avgpool2d_forward",
    "global_maxpool2d_backward",
    "global_maxpool2d_forward",
    "linear_backward",
    "linear_forward",
    "log_softmax",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "relu_backward",
    "relu_forward",
    "resolve_padding",
    "softmax",
    "tanh_backward",
    "tanh_forward",
]
