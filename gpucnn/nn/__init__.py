"""Layers: they hold parameters and buffers and call gpucnn.functional for the math."""

from gpucnn.losses import CrossEntropyLoss
from gpucnn.nn import init
from gpucnn.nn.activation import Dropout, ReLU, Tanh
from gpucnn.nn.batchnorm import BatchNorm2d
from gpucnn.nn.conv import Conv2d
from gpucnn.nn.fused import ConvReLUPool
from gpucnn.nn.linear import Flatten, Linear
from gpucnn.nn.module import Module, Parameter
from gpucnn.nn.pool import AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d
from gpucnn.nn.residual import Residual
from gpucnn.nn.sequential import Sequential

__all__ = [
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "ConvReLUPool",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "GlobalAvgPool2d",
    "GlobalMaxPool2d",
    "Linear",
    "MaxPool2d",
    "Module",
    "Parameter",
    "ReLU",
    "Residual",
    "Sequential",
    "Tanh",
    "init",
]
