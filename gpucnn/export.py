"""Export a trained network to ONNX (opset 17), to run it in onnxruntime or anything else.

    model = gpucnn.load("runs/<run>/checkpoints/best.npz")
    gpucnn.export.onnx(model, "model.onnx")                       # normalised images -> logits
    gpucnn.export.onnx(model, "digits.onnx", preprocessing=True)  # uint8 pixels -> probabilities

By default the graph takes the normalised images the network takes, "input": (N, C, H, W)
float32 with a dynamic batch axis N, and returns "logits" (N, K); apply
(pixels / 255 - mean) / std first (the Predictor's ``normalise``) and a softmax after, if you
want probabilities. With ``preprocessing=True`` both are in the graph: it takes "pixels",
uint8 0..255 shaped (N, H, W) (one channel: the default there), (N, H, W, C) (channels last,
as image libraries hold colour pictures: the default for colour) or (N, C, H, W), and
returns "probabilities" (N, K), the Predictor's ``predict_proba``. The normalisation is
per channel: (pixels / 255 - mean[c]) / std[c].

Either way the model describes itself: its ``doc_string`` says, in words, what to feed it and
what comes out, and its ``metadata_props`` (onnxruntime: ``session.get_modelmeta()
.custom_metadata_map``) hold the same as strings: ``input``, ``input_layout``, ``output``,
``normalisation`` (the formula, and whether the graph applies it), ``mean``, ``std`` (a
number for one channel, a JSON list of one per channel otherwise), ``image_size`` (H x W),
``channels``, ``classes`` (a JSON list, index i for output i), ``preprocessing``,
``gpucnn_version`` and, where the checkpoint says, ``model`` and ``dataset``.

Layers are exported in their declared order and with their eval-mode semantics (BatchNorm
with its running statistics, Dropout as the identity). The onnx package (the "onnx" extra) is
imported only when ``onnx`` is called.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from gpucnn import nn
from gpucnn.backend import to_host
from gpucnn.functional import resolve_padding
from gpucnn.version import __version__

OPSET = 17
IR_VERSION = 8  # the IR of opset 17: readable by onnxruntime >= 1.11


class UnsupportedLayerError(NotImplementedError):
    """A layer type that has no ONNX translation here."""


class _Graph:
    """Nodes and initializers of the graph under construction, with unique tensor names."""

    def __init__(self, helper: Any, numpy_helper: Any, float_type: int) -> None:
        self.helper, self.numpy_helper = helper, numpy_helper
        self.float_type = float_type  # TensorProto.FLOAT
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.used: set[str] = set()

    def name(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def const(self, base: str, array: Any, dtype: Any = np.float32) -> str:
        name = self.name(base)
        value = np.ascontiguousarray(to_host(array), dtype=dtype)
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


LAYOUTS = ("NHW", "NHWC", "NCHW")


def _preprocess(g: _Graph, pixels: str, layout: str, norm: Any) -> str:
    """Nodes from uint8 pixels, (N, H, W) for layout "NHW", (N, H, W, C) for "NHWC" or
    (N, C, H, W), to the normalised float32 (N, C, H, W) the network takes:
    x = (pixels * (1/255) - mean[c]) * (1/std[c]), data.normalize's float32 operations in its
    order (a gpucnn.data.Normalization: scalars when every channel has the same)."""
    base = "preprocess"
    x = pixels
    if layout == "NHW":  # (N, H, W) -> (N, 1, H, W)
        x = g.node("Unsqueeze", [x, g.const(f"{base}.channel_axis", [1], np.int64)], base)
    elif layout == "NHWC":  # (N, H, W, C) -> (N, C, H, W)
        x = g.node("Transpose", [x], base, perm=[0, 3, 1, 2])
    x = g.node("Cast", [x], base, to=g.float_type)
    x = g.node("Mul", [x, g.const(f"{base}.inv_255", np.float32(1.0 / 255.0))], base)
    mean, inv_std = norm.constants(np)
    x = g.node("Sub", [x, g.const(f"{base}.mean", mean)], base)
    return g.node("Mul", [x, g.const(f"{base}.inv_std", inv_std)], base)


def _layout_dims(layout: str, shape: tuple[int, int, int]) -> list[Any]:
    c, h, w = shape
    return {"NHW": ["N", h, w], "NHWC": ["N", h, w, c], "NCHW": ["N", c, h, w]}[layout]


def describe(
    shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    layout: str | None,
    classes: list[str] | None,
    mean: float | None,
    std: float | None,
    config: dict[str, Any] | None = None,
) -> tuple[dict[str, str], str]:
    """What an exported model says about itself: (metadata_props, doc_string).

    Args:
        shape: one sample, (C, H, W); out_shape: the network's output per sample, (K,).
        layout: the pixels' layout ("NHW" or "NCHW") when the graph takes uint8 pixels and
            returns probabilities; None when it takes normalised images and returns logits.
        classes, mean, std: the dataset's class names and normalisation, None when unknown.
        config: the run's settings (its ``model`` and ``dataset`` are recorded).
    """
    c, h, w = shape
    k = ", ".join(str(d) for d in out_shape)
    formula = "(pixels / 255 - mean) / std" + (" per channel" if c > 1 else "")
    if layout is not None:
        dims = "(" + ", ".join(str(d) for d in _layout_dims(layout, shape)) + ")"
        feed = f"pixels: uint8 {dims}, values 0..255"
        words = {
            "NHW": "batch, height, width",
            "NHWC": "batch, height, width, channel (RGB)"
            if c == 3
            else "batch, height, width, channel",
            "NCHW": "batch, channel, height, width",
        }[layout]
        out = f"probabilities: float32 (N, {k}), softmax over the classes"
        norm = f"{formula}, in the graph"
    else:
        layout, words = "NCHW", "batch, channel, height, width"
        feed = f"input: float32 (N, {c}, {h}, {w}), normalised images"
        out = f"logits: float32 (N, {k}); apply a softmax for probabilities"
        norm = f"{formula}, applied before the graph"
    in_graph = feed.startswith("pixels")
    meta = {
        "input": feed,
        "input_layout": f"{layout}: {words}",
        "output": out,
        "normalisation": norm if mean is not None else "unknown (export a Predictor)",
        "preprocessing": "in the graph" if in_graph else "not in the graph",
        "gpucnn_version": __version__,
        "image_size": f"{h}x{w}",
        "channels": str(c),
    }
    if mean is not None and std is not None:
        means, stds = np.atleast_1d(mean).tolist(), np.atleast_1d(std).tolist()
        if len(means) == 1:
            meta["mean"], meta["std"] = repr(float(means[0])), repr(float(stds[0]))
        else:
            meta["mean"], meta["std"] = json.dumps(means), json.dumps(stds)
    if classes is not None:
        meta["classes"] = json.dumps(list(classes))
    for key in ("model", "dataset"):
        if config and isinstance(config.get(key), str):
            meta[key] = config[key]
    about = f"A gpucnn {meta['model']} model" if "model" in meta else "A gpucnn network"
    if "dataset" in meta:
        about += f" trained on {meta['dataset']}"
    lines = [f"{about} (gpucnn {__version__}, ONNX opset {OPSET}).", f"Input {feed}."]
    if mean is not None:
        where = "The graph normalises them" if in_graph else "Normalise them first"
        shown = ", ".join(f"{v:g}" for v in np.atleast_1d(mean))
        shown_std = ", ".join(f"{v:g}" for v in np.atleast_1d(std))
        if np.size(mean) > 1:
            shown, shown_std = f"({shown})", f"({shown_std})"
        lines.append(f"{where}: x = {formula} with mean {shown}, std {shown_std}.")
    lines.append(f"Output {out}.")
    if classes is not None:
        lines.append(f"Classes, output index 0..{len(classes) - 1}: {', '.join(classes)}.")
    return meta, "\n".join(lines)


def onnx(
    model: Any,
    path: str | os.PathLike,
    input_shape: tuple[int, ...] | None = None,
    graph_name: str = "gpucnn",
    *,
    preprocessing: bool = False,
    layout: str | None = None,
    classes: list[str] | None = None,
    mean: float | None = None,
    std: float | None = None,
) -> Path:
    """Write ``model`` as an ONNX file (opset 17) whose batch axis is dynamic and that says
    how to feed it (``doc_string`` and ``metadata_props``; see the module's docstring).

    Args:
        model: an nn.Module (nn.Sequential of the supported layers, as gpucnn.models builds)
            or a Predictor (its module is exported, with its classes and normalisation; see
            gpucnn.inference).
        path: the .onnx file to write.
        input_shape: one sample, (C, H, W); a leading batch axis is accepted and ignored.
            Default: the Predictor's input shape, else (1, 28, 28).
        graph_name: the ONNX graph's name.
        preprocessing: put the normalisation and the softmax in the graph: it takes uint8
            pixels and returns probabilities.
        layout: with preprocessing, the pixels' layout: "NHW", (N, H, W) as MNIST's arrays
            are (one channel only; the default then), "NHWC", (N, H, W, C) as image libraries
            hold colour pictures (the default for more than one channel), or "NCHW",
            (N, C, H, W). One graph input has one layout, so a file takes one of them:
            export each you need.
        classes, mean, std: the class names and the normalisation (one value, or one per
            channel), for a bare module (a Predictor's own are the default).

    Returns:
        ``path`` as a Path. Without preprocessing the graph's input is "input" (N, C, H, W)
        float32 — normalised images — and its output "logits" (N, K); with it, "pixels"
        (uint8, ``layout``) and "probabilities" (N, K).

    Raises:
        UnsupportedLayerError: a layer has no ONNX translation (the message names its type).
        ValueError: ``input_shape`` does not fit the model; preprocessing without a mean and
            std, or with a layout that is not "NHW" (one channel) or "NCHW"; class names that
            are not one per output.
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
    if classes is None:
        classes = getattr(model, "classes", None)
    classes = [str(c) for c in classes] if classes is not None else None
    mean = mean if mean is not None else getattr(model, "mean", None)
    std = std if std is not None else getattr(model, "std", None)
    if classes is not None and (len(out_shape) != 1 or len(classes) != out_shape[0]):
        raise ValueError(
            f"export.onnx: {len(classes)} class names for a model whose output is {out_shape}"
        )
    norm = None
    if (mean is None) != (std is None):
        raise ValueError(f"export.onnx: give both mean and std (> 0), got {mean!r}, {std!r}")
    if mean is not None:
        from gpucnn.data.normalization import as_normalization

        try:
            norm = as_normalization(mean, std).for_channels(shape[0])
        except ValueError as exc:
            raise ValueError(
                f"export.onnx: give both mean and std (> 0), one or one per channel, got "
                f"{mean!r}, {std!r} ({exc})"
            ) from None
    if preprocessing:
        layout = layout or ("NHW" if shape[0] == 1 else "NHWC")
        if layout not in LAYOUTS or (layout == "NHW" and shape[0] != 1):
            allowed = (
                "'NHW', 'NHWC' or 'NCHW'"
                if shape[0] == 1
                else "'NHWC' or 'NCHW' (it takes more than one)"
            )
            raise ValueError(
                f"export.onnx: layout must be {allowed} for a model taking {shape[0]} "
                f"channel(s) per image, got {layout!r}"
            )
        if mean is None:
            raise ValueError(
                "export.onnx: preprocessing=True needs the normalisation: export a Predictor "
                "(gpucnn.load(checkpoint)), or pass mean= and std="
            )
    elif layout is not None:
        raise ValueError("export.onnx: layout is the pixels' layout; it needs preprocessing=True")

    g = _Graph(helper, numpy_helper, TensorProto.FLOAT)
    if preprocessing:
        x = g.name("pixels")
        feed = helper.make_tensor_value_info(x, TensorProto.UINT8, _layout_dims(layout, shape))
        y = _emit(g, module, _preprocess(g, x, layout, norm), "")
        g.nodes.append(helper.make_node("Softmax", [y], ["probabilities"], axis=1))
        result = helper.make_tensor_value_info(
            "probabilities", TensorProto.FLOAT, ["N", *out_shape]
        )
    else:
        x = g.name("input")
        feed = helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", *shape])
        y = _emit(g, module, x, "")
        if y == x:  # nothing but identities: an output must be a node's
            y = g.node("Identity", [x], "model")
        g.nodes.append(helper.make_node("Identity", [y], ["logits"], name="logits"))
        result = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", *out_shape])
    config = getattr(model, "config", None)
    meta, doc = describe(shape, out_shape, layout, classes, mean, std, config)
    graph = helper.make_graph(
        g.nodes, graph_name, [feed], [result], initializer=g.initializers, doc_string=doc
    )
    proto = helper.make_model(
        graph,
        producer_name="gpucnn",
        producer_version=__version__,
        doc_string=doc,
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    helper.set_model_props(proto, meta)
    proto.ir_version = IR_VERSION
    onnx_lib.checker.check_model(proto, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_lib.save(proto, str(path))
    return path
