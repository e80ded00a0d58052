"""The captured training step checked against the eager step before the graph is trusted.

gpucnn.train.graph captures one CUDA graph per batch size. Nothing of that path had run on a
GPU before a user's, so at each first capture the graph earns its place: from the same
parameters, optimizer state, batch and dropout keys, one eager step (the same work launched
by the host, matrix products by cuBLAS) and one launch of the graph must agree. The state the
step writes is copied before either runs (:func:`step_arrays`, :func:`copies`), the eager step
runs, its result is copied and the state put back, the graph is launched, and the two are
compared (:func:`compare`) in one device-to-host read. Agreement: training goes on from the
graph's step (so a checked fit is the unchecked one, step for step). Disagreement: the eager
step's result is put back, the fit trains eagerly and says what differed and by how much (or
raises, under ``cuda_graph=True``).

Tolerances (float32; the two steps differ by the products' summation order, cuBLAS against
the GEMM kernels, and BatchNorm's atomics):

- each parameter: max |graph - eager| <= PARAM_RTOL (1e-3) of the largest change the eager
  step made to it, + VALUE_RTOL (1e-6) of its largest value (a frozen parameter must not
  move). A parameter whose eager gradient is rounding noise (at most GRAD_NOISE, 1e-5, of the
  model's largest gradient entry: a convolution's bias ahead of BatchNorm, whose gradient is
  0 in exact arithmetic) takes an Adam step of the noise's sign, which no two summation orders
  share; it is held to its gradient instead: max |graph - eager| <= GRAD_RTOL (1e-4) of the
  model's largest gradient entry;
- each buffer (BatchNorm's running statistics): BUFFER_RTOL (1e-4) of its largest value;
- the loss: LOSS_RTOL (1e-4) of max(1, |loss|); the gradient norm: 1e-4 of itself;
- the correct count: at most one image in a hundred of the batch (at least one: logits that
  tie to rounding may take either class).

Cost, once per batch size: two copies of what the step writes (parameters, optimizer state,
buffers: 8x the parameters' memory for Adam, briefly), one more step, and one host read; for
the seed model on an H200, about the time of two eager steps (~10 ms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpucnn.backend import is_device_array, to_host

PARAM_RTOL = 1e-3
VALUE_RTOL = 1e-6
GRAD_NOISE = 1e-5
GRAD_RTOL = 1e-4
BUFFER_RTOL = 1e-4
LOSS_RTOL = 1e-4
NORM_RTOL = 1e-4


@dataclass(frozen=True)
class Difference:
    """One compared quantity: the largest |graph - eager| and what it is allowed to be."""

    what: str
    diff: float
    allowed: float
    rule: str

    @property
    def ratio(self) -> float:
        """diff / allowed (inf for a difference where none is allowed, or a NaN)."""
        if not math.isfinite(self.diff):
            return math.inf
        if self.allowed > 0:
            return self.diff / self.allowed
        return 0.0 if self.diff == 0 else math.inf


@dataclass(frozen=True)
class StepCheck:
    """The graph's step against the eager step, at batch size ``rows``."""

    rows: int
    differences: tuple[Difference, ...]

    @property
    def ok(self) -> bool:
        return all(d.ratio <= 1 for d in self.differences)

    @property
    def worst(self) -> Difference:
        return max(self.differences, key=lambda d: d.ratio)

    def line(self) -> str:
        """One sentence: agreement (and the closest call), or what differed and by how much."""
        w = self.worst
        if self.ok:
            return (
                f"the captured step (batch {self.rows}) agrees with the eager step "
                f"({len(self.differences)} quantities; closest: {w.what}, {w.diff:.2e} of "
                f"{w.allowed:.2e} allowed)"
            )
        over = sum(d.ratio > 1 for d in self.differences)
        more = f"; {over - 1} more over their tolerance" if over > 1 else ""
        return (
            f"the captured step (batch {self.rows}) disagrees with the eager step: {w.what} "
            f"differs by {w.diff:.3g} where {w.allowed:.3g} is allowed ({w.rule}){more}"
        )


def step_arrays(fit: Any) -> list[tuple[str, Any]]:
    """(name, array) of every device array a graph step writes and a later step reads:
    parameters, buffers, the optimizer's state and step state, the dropout and batch states,
    the epoch's step records and correct count. ``fit`` is a gpucnn.train.graph.GraphTraining.
    """
    model, opt = fit.model, fit.optimizer
    out = [(f"parameter {n}", p.data) for n, p in model.named_parameters()]
    out += [(f"buffer {n}", b) for n, b in model.named_buffers()]
    for i, p in enumerate(opt.params):
        for key, value in opt.state.get(p, {}).items():
            if is_device_array(value):
                out.append((f"optimizer {i}.{key}", value))
    if opt.step_state is not None:
        out.append(("optimizer step state", opt.step_state))
    out += [(f"dropout state {i}", layer.state) for i, layer in enumerate(fit.dropouts)]
    out += [("batch state", fit.batch_state), ("step records", fit.stats)]
    out.append(("correct count", fit.correct))
    return out


def copies(arrays: list[tuple[str, Any]]) -> list[Any]:
    """Device copies of the arrays' values."""
    return [a.copy() for _, a in arrays]


def put_back(arrays: list[tuple[str, Any]], values: list[Any]) -> None:
    """Write ``values`` (from :func:`copies`) into the arrays, in place (a graph holds their
    addresses)."""
    for (_, a), v in zip(arrays, values, strict=True):
        a[...] = v


def compare(
    fit: Any,
    arrays: list[tuple[str, Any]],
    before: list[Any],
    eager: list[Any],
    grads: tuple[list[Any], list[Any]],
    index: int,
    rows: int,
) -> StepCheck:
    """The graph's step (the arrays now) against the eager one (``eager``), both from
    ``before``; ``grads`` = (the graph's, the eager step's) gradient per model parameter (None
    where there is none); ``index`` is the step's place in the epoch (its loss and norm)."""
    xp = fit.backend.xp
    f64 = np.float64

    def amax(a: Any) -> Any:
        return xp.abs(a.astype(f64)).max() if a.size else xp.zeros((), f64)

    def adiff(a: Any, b: Any) -> Any:
        return amax(a.astype(f64) - b.astype(f64)) if a.size else xp.zeros((), f64)

    names = [name for name, _ in arrays]
    values: list[Any] = []
    params = [i for i, n in enumerate(names) if n.startswith("parameter ")]
    buffers = [i for i, n in enumerate(names) if n.startswith("buffer ")]
    zero = xp.zeros((), f64)
    for j, i in enumerate(params):
        now, want, was = arrays[i][1], eager[i], before[i]
        g_graph, g_eager = grads[0][j], grads[1][j]
        values += [adiff(now, want), adiff(want, was), amax(was)]
        if g_graph is None or g_eager is None:
            values += [zero, zero]
        else:
            values += [adiff(g_graph, g_eager), amax(g_eager)]
    for i in buffers:
        values += [adiff(arrays[i][1], eager[i]), amax(eager[i])]
    records, correct = names.index("step records"), names.index("correct count")
    stats_now, stats_eager = arrays[records][1], eager[records]
    values += [stats_now[0, index], stats_eager[0, index], stats_now[1, index]]
    values += [stats_eager[1, index], arrays[correct][1], eager[correct]]
    host = to_host(xp.stack([xp.asarray(v, dtype=f64).reshape(()) for v in values]))
    return _differences(names, params, buffers, host, rows)


def _differences(
    names: list[str], params: list[int], buffers: list[int], host: np.ndarray, rows: int
) -> StepCheck:
    out = []
    at = 5 * len(params)
    per_param = host[:at].reshape(-1, 5)
    largest_grad = float(per_param[:, 4].max()) if len(params) else 0.0
    for i, (diff, update, value, gdiff, grad) in zip(params, per_param, strict=True):
        name = names[i]
        if grad > 0 and grad <= GRAD_NOISE * largest_grad:
            out.append(
                Difference(
                    f"{name} (its gradient)", gdiff, GRAD_RTOL * largest_grad,
                    f"{GRAD_RTOL:g} of the largest gradient entry: its own gradient is "
                    "rounding noise",
                )
            )  # fmt: skip
            continue
        allowed = PARAM_RTOL * update + VALUE_RTOL * value
        rule = f"{PARAM_RTOL:g} of the eager step's largest change to it, {update:.3g}"
        out.append(Difference(name, diff, allowed, rule))
    for k, i in enumerate(buffers):
        diff, value = host[at + 2 * k], host[at + 2 * k + 1]
        out.append(Difference(names[i], diff, BUFFER_RTOL * value, f"{BUFFER_RTOL:g} of it"))
    loss_g, loss_e, norm_g, norm_e, right_g, right_e = host[at + 2 * len(buffers) :]
    out.append(
        Difference(
            "the loss", abs(loss_g - loss_e), LOSS_RTOL * max(1.0, abs(loss_e)),
            f"{LOSS_RTOL:g} of max(1, loss {loss_e:.6g})",
        )
    )  # fmt: skip
    out.append(
        Difference(
            "the gradient norm", abs(norm_g - norm_e), NORM_RTOL * abs(norm_e),
            f"{NORM_RTOL:g} of it, {norm_e:.6g}",
        )
    )  # fmt: skip
    out.append(
        Difference(
            "the correct count", abs(right_g - right_e), float(max(1, rows // 100)),
            "one image in a hundred",
        )
    )  # fmt: skip
    return StepCheck(rows, tuple(Difference(d.what, float(d.diff), float(d.allowed), d.rule)
                                 for d in out))  # fmt: skip
