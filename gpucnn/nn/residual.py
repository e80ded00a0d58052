"""Residual connection: y = body(x) + shortcut(x) (He et al. 2016)."""

from __future__ import annotations

from typing import Any

from gpucnn.nn.module import Module, Shape


class Residual(Module):
    """y = body(x) + shortcut(x); the shortcut is the identity or a module (a 1×1 conv when
    the body changes the shape).

    Backward: the gradient reaches x along both paths and the two are summed,
    dx = body.backward(dy) + shortcut.backward(dy) — the identity path is why deep residual
    networks train.

    Args:
        body: the residual branch.
        shortcut: None for the identity, or a module mapping x to body(x)'s shape.

    Shape: x -> body(x)'s shape, which the shortcut's output must match.
    """

    def __init__(self, body: Module, shortcut: Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: Any) -> Any:
        y = self.body(x)
        s = x if self.shortcut is None else self.shortcut(x)
        if y.shape != s.shape:
            raise ValueError(
                f"Residual: body output {tuple(y.shape)} and shortcut output {tuple(s.shape)} "
                "differ; y = body(x) + shortcut(x) needs equal shapes (use a 1x1 conv shortcut "
                "with the body's stride and channels)"
            )
        return y + s

    def backward(self, dy: Any) -> Any:
        dx = self.body.backward(dy)
        return dx + (dy if self.shortcut is None else self.shortcut.backward(dy))

    def output_shape(self, in_shape: Shape) -> Shape:
        return self.body.output_shape(in_shape)

    def summary_rows(self, in_shape: Shape, name: str) -> tuple[list[tuple], Shape]:
        rows, out = self.body.summary_rows(in_shape, f"{name}.body")
        if self.shortcut is not None:
            r, s_out = self.shortcut.summary_rows(in_shape, f"{name}.shortcut")
            rows += r
        else:
            s_out = in_shape
        if tuple(s_out) != tuple(out):
            raise ValueError(
                f"Residual {name}: body gives {tuple(out)} but shortcut gives {tuple(s_out)}"
            )
        n = 1
        for d in out:
            n *= d
        rows.append((f"{name}.add", "Add", out, 0, n, None))
        return rows, out
