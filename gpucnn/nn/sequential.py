"""Sequential: layers applied in order, backward in reverse, with the one reorder and the one
fusion it makes shown in ``repr`` and ``summary``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gpucnn.nn.fused import fuse_steps
from gpucnn.nn.module import Module, Shape


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse.

    One reorder is made, and shown: a layer that commutes with max pooling (ReLU:
    relu(max(w)) == max(relu(w)) for every window w, and the gradients agree too) runs after
    the MaxPool2d that follows it, on a quarter of the elements. ``run_order()``, ``repr`` and
    ``summary`` list the layers in the order they run, and mark the moved ones.

    One fusion is made, and shown: a Conv2d followed, in that order, by a MaxPool2d(2, 2, 0)
    and a ReLU (nothing between) runs as one step, gpucnn.nn.fused.ConvReLUPool (bias, ReLU and
    pool fused after the GEMM, and before the backward GEMMs), on a backend whose kernels say
    FUSES_CONV_RELU_POOL. The Parameters stay the Conv2d's. ``run_steps()`` lists the steps;
    ``repr`` and ``summary`` mark the fused layers; ``fuse = False`` on an instance runs the
    layers one by one.

    Shape: whatever the first layer takes -> whatever the last returns.
    """

    fuse = True

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: item {i} is {type(layer).__name__}, not a Module")
            setattr(self, str(i), layer)

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __iter__(self) -> Iterator[Module]:
        """The layers as given (``run_order`` gives the order they run in)."""
        return self.children()

    def run_order(self) -> list[tuple[str, Module]]:
        """(name, layer) in the order forward runs them: as given, except that a layer which
        commutes with max pooling runs after the MaxPool2d that directly follows it."""
        order = list(self._modules.items())
        for i in range(len(order) - 1):
            if getattr(order[i][1], "commutes_with_max_pool", False) and getattr(
                order[i + 1][1], "is_max_pool", False
            ):
                order[i], order[i + 1] = order[i + 1], order[i]
        return order

    def run_steps(self) -> list[tuple[tuple[str, ...], Module]]:
        """(names, step) in the order forward runs them: ``run_order`` with each fusable
        Conv2d, MaxPool2d, ReLU made one ConvReLUPool step (made anew on each call)."""
        order = self.run_order()
        if not self.fuse:
            return [((name,), layer) for name, layer in order]
        return fuse_steps(order)

    def _moved(self) -> dict[str, str]:
        """{name of a moved layer: name of the max pool it now runs after}."""
        order = self.run_order()
        given = list(self._modules)
        return {
            name: order[i - 1][0]
            for i, (name, _) in enumerate(order)
            if i > 0 and given.index(name) < given.index(order[i - 1][0])
        }

    def _fused(self) -> dict[str, tuple[str, ...]]:
        """{name of a layer in a fused step: the names of that step's layers}."""
        return {n: names for names, _ in self.run_steps() if len(names) > 1 for n in names}

    def forward(self, x: Any) -> Any:
        self._ran = [step for _, step in self.run_steps()]
        for step in self._ran:
            x = step(x)
        return x

    def backward(self, dy: Any) -> Any:
        ran = getattr(self, "_ran", None) or [layer for _, layer in self.run_order()]
        for layer in reversed(ran):
            dy = layer.backward(dy)
        return dy

    def output_shape(self, in_shape: Shape) -> Shape:
        for _, layer in self.run_order():
            in_shape = layer.output_shape(in_shape)
        return in_shape

    def summary_rows(self, in_shape: Shape, name: str) -> tuple[list[tuple], Shape]:
        rows: list[tuple] = []
        moved, fused = self._moved(), self._fused()
        for child_name, layer in self.run_order():
            full = f"{name}.{child_name}" if name else child_name
            if child_name in moved:
                full += f" (after {moved[child_name]})"
            if fused.get(child_name, ("",))[0] == child_name:  # the head of a fused step
                full += f" (fused: {', '.join(fused[child_name])})"
            r, in_shape = layer.summary_rows(in_shape, full)
            rows += r
        return rows, in_shape

    def __repr__(self) -> str:
        if not self._modules:
            return "Sequential()"
        moved, fused = self._moved(), self._fused()
        lines = []
        for n, m in self.run_order():
            notes = []
            if n in moved:
                notes.append(f"runs after ({moved[n]}): it commutes with max pooling")
            if n in fused and fused[n][0] == n:
                others = ", ".join(f"({o})" for o in fused[n][1:])
                notes.append(f"one step with {others}: conv2d_relu_maxpool (fused)")
            elif n in fused:
                notes.append(f"fused into ({fused[n][0]})'s step")
            note = f"  # {'; '.join(notes)}" if notes else ""
            lines.append("  " + f"({n}): {m!r}{note}".replace("\n", "\n  "))
        return "Sequential(\n" + "\n".join(lines) + "\n)"
