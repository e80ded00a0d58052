"""A PyTorch copy of a gpucnn Sequential, for the doctor's side-by-side checks and timings.

Layer for layer (Conv2d, Linear, ReLU, Tanh, MaxPool2d, AvgPool2d, Flatten, Dropout,
BatchNorm2d), the same hyperparameters and a copy of the weights, so both libraries start
from one initialisation and their losses and gradients can be compared. torch is imported
here only, when asked for.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from gpucnn import nn
from gpucnn.backend import to_host


def installed() -> bool:
    """Whether PyTorch can be imported (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def twin(model: nn.Sequential, device: str = "cpu") -> Any:
    """A torch.nn.Sequential with ``model``'s layers and weights, on ``device``.

    Raises:
        ValueError: for a layer this twin does not know (named, with its index).
    """
    import torch

    tnn = torch.nn
    layers = []
    for i, m in enumerate(model):
        kind = type(m)
        if kind is nn.Conv2d:
            layers.append(
                tnn.Conv2d(
                    m.in_channels, m.out_channels, m.kernel_size, m.stride, m.pad,
                    bias=m.bias is not None,
                )
            )  # fmt: skip
        elif kind is nn.Linear:
            layers.append(tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None))
        elif kind is nn.BatchNorm2d:
            layers.append(tnn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum))
        elif kind is nn.MaxPool2d:
            layers.append(tnn.MaxPool2d(m.kernel_size, m.stride, m.padding))
        elif kind is nn.AvgPool2d:
            layers.append(tnn.AvgPool2d(m.kernel_size, m.stride, m.padding))
        elif kind in (nn.ReLU, nn.Tanh, nn.Flatten):
            layers.append(getattr(tnn, kind.__name__)())
        elif kind is nn.Dropout:
            layers.append(tnn.Dropout(m.p))
        else:
            raise ValueError(f"torch twin: layer {i} ({kind.__name__}) has no PyTorch twin here")
    out = tnn.Sequential(*layers)
    ours = dict(model.named_parameters())
    theirs = dict(out.named_parameters())
    if list(ours) != list(theirs):
        raise ValueError(f"torch twin: parameters {list(ours)} against {list(theirs)}")
    with torch.no_grad():
        for name, p in theirs.items():
            p.copy_(torch.as_tensor(to_host(ours[name].data)))
    return out.to(device)
