"""Parameter and Module: the state-holding side of gpucnn (Sequential, which runs layers in
order, is in sequential.py).

A Module owns its Parameters and buffers (like BatchNorm's running statistics) and remembers
what its forward pass needs for the backward pass. The math itself lives in gpucnn.functional.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from gpucnn.backend import Backend, backend_of, get_backend, to_host

Shape = tuple[int, ...]


class Parameter:
    """A trainable array and the gradient accumulated into it.

    Attributes:
        data: the values (float32 by default), on the owning module's device.
        grad: the accumulated gradient, same shape and device, or None before any backward
            pass and after ``zero_grad``.
        requires_grad: False freezes it: no gradient is computed and optimizers skip it.
    """

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        self.data = data
        self.grad: Any = None
        self.requires_grad = requires_grad

    @property
    def shape(self) -> Shape:
        return tuple(self.data.shape)

    @property
    def size(self) -> int:
        return int(self.data.size)

    def accumulate(self, g: Any) -> None:
        """Add ``g`` into ``.grad`` (gradients accumulate until zero_grad, as in PyTorch)."""
        if not self.requires_grad or g is None:
            return
        if self.grad is None:
            self.grad = g
        else:
            self.grad += g

    def __repr__(self) -> str:
        return (
            f"Parameter(shape={self.shape}, dtype={self.data.dtype}, "
            f"requires_grad={self.requires_grad})"
        )


class Module:
    """Base class of every layer and model.

    Subclasses implement ``forward(x)`` (which stores what backward needs) and
    ``backward(dy)`` (which accumulates parameter gradients and returns dx), and
    ``output_shape(in_shape)`` for per-sample shapes used by ``summary``.

    A layer keeps the cache its functional op's forward returns in ``self._cache`` and reads
    it back with :meth:`kept`; a layer with a ``weight`` and an optional ``bias`` (Conv2d,
    Linear) runs its backward with :meth:`backward_weight_bias`.

    Attributes:
        input_grad: whether backward computes dx (read by :meth:`backward_weight_bias`). A
            network's first layer sets it False: nothing needs the gradient of the images,
            so its backward skips that work and returns None.
    """

    training: bool
    input_grad = True
    _cache: Any = None  # what the last forward pass kept for backward (None: nothing)

    def __init__(self) -> None:
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_buffers", [])
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_params" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call Module.__init__() before assigning")
        # replacing a child keeps its place (a Sequential runs its children in that order)
        if isinstance(value, Parameter):
            self._modules.pop(name, None)
            self._params[name] = value
        elif isinstance(value, Module):
            self._params.pop(name, None)
            self._modules[name] = value
        else:
            self._params.pop(name, None)
            self._modules.pop(name, None)
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: Any) -> None:
        """A non-trainable array saved in checkpoints and moved by ``to`` (e.g. running stats)."""
        if name not in self._buffers:
            self._buffers.append(name)
        object.__setattr__(self, name, value)

    # -- the two passes -------------------------------------------------------------------
    def forward(self, x: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dy: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, x: Any) -> Any:
        return self.forward(x)

    def kept(self) -> Any:
        """The cache the last forward pass kept for backward, or a RuntimeError that says why
        there is none: no forward yet, or one under gpucnn.no_grad()."""
        if self._cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called before forward (or after one under "
                "gpucnn.no_grad(), which keeps nothing for a backward)"
            )
        return self._cache

    def forget(self) -> None:
        """Drop what the last forward pass kept: a step that ran this layer's math in its
        place (a fused step) calls it, so that this layer's own backward says it has
        nothing rather than use an older forward's cache."""
        self._cache = None

    def weight_and_bias(self) -> tuple[Any, Any]:
        """The arrays of a layer's ``weight`` and optional ``bias`` (None where it has
        none), as its functional op takes them."""
        bias = getattr(self, "bias", None)
        return self.weight.data, None if bias is None else bias.data

    def backward_weight_bias(self, op_backward: Callable[..., tuple], dy: Any, cache: Any) -> Any:
        """The backward pass of a layer with a ``weight`` and an optional ``bias``:
        ``op_backward(dy, cache, need_dx, need_params) -> (dx, dweight, dbias)``, skipping dx
        where ``input_grad`` is False and the parameters' gradients where both are frozen;
        dweight and dbias are accumulated into the Parameters. Returns dx (or None)."""
        bias = getattr(self, "bias", None)
        need_params = self.weight.requires_grad or (bias is not None and bias.requires_grad)
        dx, dw, db = op_backward(dy, cache, need_dx=self.input_grad, need_params=need_params)
        self.weight.accumulate(dw)
        if bias is not None:
            bias.accumulate(db)
        return dx

    # -- structure ------------------------------------------------------------------------
    def children(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """(name, module) of the direct children, in order (``setattr(self, name, other)``
        replaces one in its place)."""
        return iter(list(self._modules.items()))

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for mod_name, m in self.named_modules(prefix):
            for name, p in m._params.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, recurse: bool = True) -> Iterator[tuple[str, Any]]:
        """(dotted name, array) of the buffers of this module and, with ``recurse``, of every
        module below it."""
        for mod_name, m in self.named_modules() if recurse else [("", self)]:
            for name in m._buffers:
                yield (f"{mod_name}.{name}" if mod_name else name), getattr(m, name)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    # -- modes and placement --------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, device: str | Backend | None = None, dtype: Any = None) -> Module:
        """Move parameters and buffers to ``device`` ("cpu", "cuda" or a Backend) and/or cast
        them to ``dtype``.

        Gradients are dropped (they belong to the old arrays).
        """
        backend = get_backend(device) if device is not None else None

        def move(a: Any) -> Any:
            if backend is not None:
                a = backend.asarray(a)
            if dtype is not None:
                a = a.astype(dtype)
            return a

        for p in self.parameters():
            p.data, p.grad = move(p.data), None
        for _, m in self.named_modules():
            for name in m._buffers:
                object.__setattr__(m, name, move(getattr(m, name)))
        return self

    @property
    def device(self) -> str:
        params = self.parameters()
        return backend_of(params[0].data).name if params else "cpu"

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers by dotted name, copied to the host."""
        state = {name: to_host(p.data).copy() for name, p in self.named_parameters()}
        state.update({name: to_host(b).copy() for name, b in self.named_buffers()})
        return state

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy arrays into parameters and buffers; shapes must match.

        Raises:
            ValueError: on missing or unexpected names (when strict) or a shape mismatch.
        """
        params = dict(self.named_parameters())
        buffers = {
            (f"{mod_name}.{n}" if mod_name else n): (m, n)
            for mod_name, m in self.named_modules()
            for n in m._buffers
        }
        if strict:
            missing = [k for k in (set(params) | set(buffers)) if k not in state]
            unexpected = [k for k in state if k not in params and k not in buffers]
            if missing or unexpected:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: missing keys {sorted(missing)}, "
                    f"unexpected keys {sorted(unexpected)}"
                )
        for name, value in state.items():
            if name in params:
                target = params[name].data
            elif name in buffers:
                target = getattr(*buffers[name])
            else:
                continue
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {name} has shape "
                    f"{tuple(value.shape)} in the state but {tuple(target.shape)} in the model"
                )
            xp = backend_of(target).xp
            target[...] = xp.asarray(value, dtype=target.dtype)

    # -- shapes and summary ---------------------------------------------------------------
    def output_shape(self, in_shape: Shape) -> Shape:
        """Per-sample output shape for a per-sample input shape (no batch axis)."""
        return in_shape

    def flops(self, in_shape: Shape) -> int:
        """Floating-point operations of one forward pass over one sample (a multiply-add = 2)."""
        return 0

    def dense_equivalent(self, in_shape: Shape) -> int | None:
        """Parameters a fully connected layer with the same input and output sizes would need."""
        return None

    def summary_rows(self, in_shape: Shape, name: str) -> tuple[list[tuple], Shape]:
        out = self.output_shape(in_shape)
        own = sum(p.size for p in self._params.values())
        row = (
            name or type(self).__name__,
            type(self).__name__,
            out,
            own,
            self.flops(in_shape),
            self.dense_equivalent(in_shape),
        )
        return [row], out

    def summary(self, input_shape: Shape, print_fn: Any = print) -> str:
        """Print and return a per-layer table: output shape, parameters, FLOPs, and for each
        convolution the parameters a fully connected layer would need for the same mapping.

        Args:
            input_shape: one sample's shape, e.g. (1, 28, 28); a leading batch axis
                (N, C, H, W) is accepted and ignored.
        """
        shape = tuple(int(s) for s in input_shape)
        if len(shape) == 4:
            shape = shape[1:]
        rows, out = self.summary_rows(shape, "")
        head = ("layer", "type", "output shape", "params", "FLOPs", "dense-equivalent params")
        table = [head] + [
            (
                r[0],
                r[1],
                str(tuple(r[2])),
                f"{r[3]:,}",
                f"{r[4]:,}",
                "" if r[5] is None else f"{r[5]:,}",
            )
            for r in rows
        ]
        widths = [max(len(t[i]) for t in table) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)) for t in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        total_p = self.num_parameters()
        total_f = sum(r[4] for r in rows)
        lines.append(
            f"input {shape} -> output {tuple(out)}; {total_p:,} parameters "
            f"({self.num_parameters(trainable_only=True):,} trainable); "
            f"{total_f:,} FLOPs per sample forward"
        )
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        inner = "\n".join(
            "  " + f"({n}): {m!r}".replace("\n", "\n  ") for n, m in self._modules.items()
        )
        return f"{type(self).__name__}(\n{inner}\n)"
