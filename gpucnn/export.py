"""Export a trained network to ONNX (opset 17), to run it in onnxruntime or anything else.

    gpucnn.export.onnx(gpucnn.load("runs/<run>/checkpoints/best.npz"), "model.onnx")

The graph takes the normalised images the network takes, (N, C, H, W) float32 with a dynamic
batch axis N, and returns the logits (N, K); apply (pixels / 255 - mean) / std first (the
Predictor's ``normalise``) and a softmax after, if you want probabilities. Layers are
exported in their declared order and with their eval-mode semantics (BatchNorm with its
running statistics, Dropout as the identity). The onnx package (the "onnx" extra) is imported
only when ``onnx`` is called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from gpucnn import nn
from gpucnn.backend import to_host
from gpucnn.functional import resolve_padding

OPSET = 17
IR_VERSION = 8  # the IR of opset 17: readable by onnxruntime >= 1.11


class UnsupportedLayerError(NotImplementedError):
    """A layer type that has no ONNX translation here."""


class _Graph:
    """Nodes and initializers of the graph under construction, with unique tensor names."""

    def __init__(self, helper: Any, numpy_helper: Any) -> None:
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.used: set[str] = set()

    def name(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def const(self, base: str, array: Any) -> str:
        name = self.name(base)
        value = np.ascontiguousarray(to_host(array), dtype=np.float32)
        self.initializers.append(self.numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = self.name(f"{base}:{op}")
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _window(m: Any, pad: int) -> dict[str, Any]:
    k, s = m.kernel_size, m.stride
    return {"kernel_shape": [k, k], "strides": [s, s], "pads": [pad] * 4}


def _emit(g: _Graph, m: nn.Module, x: str, name: str) -> str:
    """Append the nodes of module ``m`` (path ``name``) applied to tensor ``x``; returns the
    output tensor's name."""
    base = name or "model"
    kind = type(m)
    if kind is nn.Sequential:
        for i, child in enumerate(m.children()):  # declared order (names are "0", "1", ...)
            x = _emit(g, child, x, f"{name}.{i}" if name else str(i))
        return x
    if kind is nn.Residual:
        y = _emit(g, m.body, x, f"{base}.body")
        s = x if m.shortcut is None else _emit(g, m.shortcut, x, f"{base}.shortcut")
        return g.node("Add", [y, s], base)
    if kind is nn.Conv2d:
        pad = resolve_padding("Conv2d", m.padding, m.kernel_size, m.stride)
        inputs = [x, g.const(f"{base}.weight", m.weight.data)]
        if m.bias is not None:
            inputs.append(g.const(f"{base}.bias", m.bias.data))
        return g.node("Conv", inputs, base, dilations=[1, 1], group=1, **_window(m, pad))
    if kind is nn.Linear:
        inputs = [x, g.const(f"{base}.weight", m.weight.data)]
        if m.bias is not None:
            inputs.append(g.const(f"{base}.bias", m.bias.data))
        return g.node("Gemm", inputs, base, transB=1)  # y = x W^T + b
    if kind is nn.BatchNorm2d:
        inputs = [x] + [
            g.const(f"{base}.{p}", a)
            for p, a in (
                ("weight", m.weight.data),
                ("bias", m.bias.data),
                ("running_mean", m.running_mean),
                ("running_var", m.running_var),
            )
        ]
        return g.node("BatchNormalization", inputs, base, epsilon=m.eps)
    if kind is nn.MaxPool2d:
        return g.node("MaxPool", [x], base, ceil_mode=0, **_window(m, m.padding))
    if kind is nn.AvgPool2d:  # gpucnn counts the padded zeros in each mean
        return g.node(
            "AveragePool", [x], base, ceil_mode=0, count_include_pad=1, **_window(m, m.padding)
        )
    if kind in (nn.GlobalAvgPool2d, nn.GlobalMaxPool2d):  # (N,C,H,W) -> (N,C,1,1) -> (N,C)
        op = "GlobalAveragePool" if kind is nn.GlobalAvgPool2d else "GlobalMaxPool"
        return g.node("Flatten", [g.node(op, [x], base)], base, axis=1)
    if kind is nn.Flatten:
        return g.node("Flatten", [x], base, axis=1)
    if kind is nn.ReLU:
        return g.node("Relu", [x], base)
    if kind is nn.Tanh:
        return g.node("Tanh", [x], base)
    if kind is nn.Dropout:  # eval mode: the identity
        return x
    supported = "Sequential, Residual, Conv2d, Linear, BatchNorm2d, MaxPool2d, AvgPool2d, "
    supported += "GlobalAvgPool2d, GlobalMaxPool2d, Flatten, ReLU, Tanh, Dropout"
    raise UnsupportedLayerError(
        f"cannot export layer {name or '(the model)'!r} of type {kind.__name__} to ONNX; "
        f"supported layer types: {supported}"
    )


def onnx(
    model: Any,
    path: str | os.PathLike,
    input_shape: tuple[int, ...] | None = None,
    graph_name: str = "gpucnn",
) -> Path:
    """Write ``model`` as an ONNX file (opset 17) whose batch axis is dynamic.

    Args:
        model: an nn.Module (nn.Sequential of the supported layers, as gpucnn.models builds)
            or a Predictor (its module is exported; see gpucnn.inference).
        path: the .onnx file to write.
        input_shape: one sample, (C, H, W); a leading batch axis is accepted and ignored.
            Default: the Predictor's input shape, else (1, 28, 28).
        graph_name: the ONNX graph's name.

    Returns:
        ``path`` as a Path. The graph's input is "input" (N, C, H, W) float32 — normalised
        images — and its output "logits" (N, K).

    Raises:
        UnsupportedLayerError: a layer has no ONNX translation (the message names its type).
        ValueError: ``input_shape`` does not fit the model.
        ImportError: the onnx package is missing (pip install 'gpucnn[onnx]').
    """
    try:
        import onnx as onnx_lib
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        raise ImportError(
            "exporting to ONNX needs the onnx package: pip install 'gpucnn[onnx]'"
        ) from exc
    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise TypeError(f"export.onnx: expected an nn.Module or a Predictor, got {type(model)}")
    if input_shape is None:
        input_shape = getattr(model, "input_shape", (1, 28, 28))
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"export.onnx: input_shape must be (C, H, W), got {input_shape!r}")
    out_shape = tuple(module.output_shape(shape))  # raises if the shape does not fit

    g = _Graph(helper, numpy_helper)
    x = g.name("input")
    y = _emit(g, module, x, "")
    if y == x:  # nothing but identities: an output must be a node's
        y = g.node("Identity", [x], "model")
    g.nodes.append(helper.make_node("Identity", [y], ["logits"], name="logits"))
    graph = helper.make_graph(
        g.nodes,
        graph_name,
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", *out_shape])],
        initializer=g.initializers,
    )
    proto = helper.make_model(
        graph, producer_name="gpucnn", opset_imports=[helper.make_opsetid("", OPSET)]
    )
    proto.ir_version = IR_VERSION
    onnx_lib.checker.check_model(proto, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_lib.save(proto, str(path))
    return path
