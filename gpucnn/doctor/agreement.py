"""Every kernel family of a device at small shapes against its reference, and a model's loss and
gradients: the checks ``python -m gpucnn.doctor`` runs on each device and that
benchmarks/gpu_check.py's part (a) reports at the seed model's shapes.

The reference of the CUDA kernels is their CPU twin (gpucnn.backend.cpu), fed the same float32
inputs; the reference of the CPU kernels is gpucnn.doctor.reference (the same functions in
float64 NumPy, the per-element rules run as plain Python). A row's ``diff`` is
max |kernel - reference| / max(1, max |reference|); a kernel row passes at ``diff <= 1e-4``
(KERNEL_TOL: float32 rounding of short sums is ~1e-7 of that scale; a wrong index is ~1). The
model rows: the loss to LOSS_TOL absolute, each parameter's gradient to GRAD_TOL of its
largest entry; the CUDA model against the same model on the CPU, the CPU model against its
PyTorch twin (when PyTorch is installed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from gpucnn.backend import Backend, formulas, to_host

KERNEL_TOL = 1e-4
LOSS_TOL = 1e-4
GRAD_TOL = 1e-3

SEED_WINDOW_SHAPES = (  # (N, C, H, W, k, stride, pad): the seed model's convs and pools
    (64, 1, 28, 28, 3, 1, 1),
    (64, 32, 14, 14, 3, 1, 1),
    (64, 32, 28, 28, 2, 2, 0),
    (64, 64, 14, 14, 2, 2, 0),
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The shapes the checks run at: the seed model's (batch 64) by default; SMALL for the
    doctor on any machine; tests shrink them further for the CUDA simulator."""

    windows: tuple = SEED_WINDOW_SHAPES
    activations: tuple = (64, 32, 28, 28)  # after the first conv
    logits: tuple = (64, 10)
    fc_weight: tuple = (3136, 128)
    image: tuple = (1, 28, 28)
    batch: int = 64
    model: Callable[[], Any] | None = None  # default: models.build("seed", seed=0)


SMALL = Sizes(
    windows=((4, 1, 12, 12, 3, 1, 1), (4, 8, 7, 7, 3, 2, 1), (4, 8, 12, 12, 2, 2, 0)),
    activations=(4, 8, 6, 6),
    logits=(8, 10),
    fc_weight=(72, 16),
    batch=8,
)


@dataclasses.dataclass(frozen=True)
class Row:
    """One check: ``family`` (the kernels module it belongs to), what was compared, and how
    far apart (``diff``, against ``tol``)."""

    family: str
    name: str
    diff: float
    tol: float

    @property
    def ok(self) -> bool:
        return math.isfinite(self.diff) and self.diff <= self.tol


def _far(got: Any, want: Any) -> float:
    g, w = np.asarray(to_host(got), np.float64), np.asarray(to_host(want), np.float64)
    if g.shape != w.shape:
        return math.inf
    if not w.size:
        return 0.0
    both_nan = np.isnan(g) & np.isnan(w)
    diff = np.where(both_nan, 0.0, np.abs(g - w))
    worst = float(diff.max())
    return worst / max(1.0, float(np.nanmax(np.abs(w)))) if math.isfinite(worst) else math.inf


class _Checker:
    """Runs each kernel on the device and its reference on the host, collecting rows."""

    def __init__(self, device: Backend) -> None:
        from gpucnn.backend import cpu

        self.k = device.kernels
        if device.name == "cpu":
            from gpucnn.doctor import reference

            self.ref: ModuleType = reference
            self.ref_dtype: Any = np.float64
        else:
            self.ref, self.ref_dtype = cpu, np.float32
        self.put = lambda a: device.asarray(np.array(a))  # a copy: kernels write in place
        self.rows: list[Row] = []
        self.g = np.random.default_rng(0)

    def data(self, *shape: int) -> np.ndarray:
        return self.g.standard_normal(shape).astype(np.float32)

    def own(self, a: np.ndarray) -> np.ndarray:
        """A copy of ``a`` for the reference (in the reference's dtype)."""
        return np.array(a, dtype=self.ref_dtype)

    def row(self, family: str, name: str, got: Any, want: Any, tol: float = KERNEL_TOL) -> None:
        self.rows.append(Row(family, name, _far(got, want), tol))


def kernel_rows(device: Backend, sizes: Sizes = SMALL) -> list[Row]:  # noqa: B008
    """Every kernel family of ``device`` against its reference at ``sizes`` (module
    docstring)."""
    c = _Checker(device)
    _windows(c, sizes)
    _products(c, sizes)
    _elementwise(c, sizes)
    _batchnorm(c, sizes)
    _optimizers(c, sizes)
    _batches(c, sizes, device)
    return c.rows


def _windows(c: _Checker, sizes: Sizes) -> None:
    k, ref, put = c.k, c.ref, c.put
    for n, ch, h, w, kk, s, p in sizes.windows:
        x = c.data(n, ch, h, w)
        tag = f"{(n, ch, h, w)} k{kk} s{s} p{p}"
        cols = k.im2col(put(x), kk, s, p)
        c.row("window", f"im2col {tag}", cols, ref.im2col(c.own(x), kk, s, p))
        dc = c.data(*cols.shape)
        c.row(
            "window", f"col2im {tag}",
            k.col2im(put(dc), x.shape, kk, s, p), ref.col2im(c.own(dc), x.shape, kk, s, p),
        )  # fmt: skip
        if 2 * p <= kk:
            y, arg = k.maxpool2d_fwd(put(x), kk, s, p)
            yr, argr = ref.maxpool2d_fwd(c.own(x), kk, s, p)
            c.row("pool", f"maxpool fwd {tag}", y, yr)
            dy = c.data(*yr.shape)
            c.row(
                "pool", f"maxpool bwd {tag}",
                k.maxpool2d_bwd(put(dy), arg, x.shape, kk, s, p),
                ref.maxpool2d_bwd(c.own(dy), argr, x.shape, kk, s, p),
            )  # fmt: skip
            c.row("pool", f"avgpool fwd {tag}", k.avgpool2d_fwd(put(x), kk, s, p),
                  ref.avgpool2d_fwd(c.own(x), kk, s, p))  # fmt: skip
            c.row("pool", f"avgpool bwd {tag}", k.avgpool2d_bwd(put(dy), x.shape, kk, s, p),
                  ref.avgpool2d_bwd(c.own(dy), x.shape, kk, s, p))  # fmt: skip
    a = c.data(*sizes.activations)
    y, arg = k.global_maxpool2d_fwd(put(a))
    yr, argr = ref.global_maxpool2d_fwd(c.own(a))
    tag = f"{sizes.activations}"
    c.row("pool", f"global maxpool fwd {tag}", y, yr)
    dy = c.data(*yr.shape)
    c.row("pool", f"global maxpool bwd {tag}", k.global_maxpool2d_bwd(put(dy), arg, a.shape),
          ref.global_maxpool2d_bwd(c.own(dy), argr, a.shape))  # fmt: skip
    c.row("pool", f"global avgpool fwd {tag}", k.global_avgpool2d_fwd(put(a)),
          ref.global_avgpool2d_fwd(c.own(a)))  # fmt: skip
    c.row("pool", f"global avgpool bwd {tag}", k.global_avgpool2d_bwd(put(dy), a.shape),
          ref.global_avgpool2d_bwd(c.own(dy), a.shape))  # fmt: skip


def _products(c: _Checker, sizes: Sizes) -> None:
    """The direct convolution, the GEMM kernels and the fused conv epilogue."""
    k, ref, put = c.k, c.ref, c.put
    n, ch, h, w = sizes.windows[0][:4]  # the first conv's input: 3x3 pad 1
    nf = max(4, sizes.activations[1])
    x, wt, b = c.data(n, ch, h, w), c.data(nf, ch, 3, 3), c.data(nf)
    tag = f"{(n, ch, h, w)} 3x3 p1"
    yd = k.conv2d_direct_fwd(put(x), put(wt), put(b), 1, 1)
    c.row("direct", f"direct conv fwd {tag}", yd,
          ref.conv2d_direct_fwd(c.own(x), c.own(wt), c.own(b), 1, 1))  # fmt: skip
    dy = c.data(*yd.shape)
    dwd, dbd = k.conv2d_direct_bwd(put(dy), put(x), 3, 1, 1)
    dwr, dbr = ref.conv2d_direct_bwd(c.own(dy), c.own(x), 3, 1, 1)
    c.row("direct", f"direct conv dw {tag}", dwd, dwr)
    c.row("direct", f"direct conv db {tag}", dbd, dbr)
    fan_in, fan_out = sizes.fc_weight
    rows = sizes.batch
    cases = (  # (name, op(a) shape source, trans_a, trans_b, alpha, beta): a linear layer's
        ("fc forward x @ W", (rows, fan_in), (fan_in, fan_out), False, False, 1.0, 0.0),
        ("fc dW = x.T @ dy", (rows, fan_in), (rows, fan_out), True, False, 1.0, 0.0),
        ("fc dx = dy @ W.T, alpha beta", (rows, fan_out), (fan_in, fan_out), False, True, 0.5, 2.0),
    )
    for name, a_shape, b_shape, ta, tb, alpha, beta in cases:
        a, bb = c.data(*a_shape), c.data(*b_shape)
        m = a_shape[1] if ta else a_shape[0]
        nn = b_shape[0] if tb else b_shape[1]
        kk = a_shape[0] if ta else a_shape[1]
        out = c.data(m, nn)
        space = k.gemm_workspace_size(m, nn, kk)
        got = k.gemm(put(a), put(bb), put(out), ta, tb, alpha, beta,
                     put(np.zeros(space, np.float32)) if space else None)  # fmt: skip
        want = ref.gemm(c.own(a), c.own(bb), c.own(out), ta, tb, alpha, beta,
                        np.zeros(space, c.ref_dtype) if space else None)  # fmt: skip
        c.row("gemm", f"gemm {name} {(m, nn, kk)}", got, want)
    na, fa, ha, wa = sizes.activations  # a conv's GEMM output (F, N, OH, OW) into the epilogue
    yt, bias = c.data(fa, na, ha, wa), c.data(fa)
    y, arg = k.conv_relu_pool2x2_fwd(put(yt), put(bias))
    yr, argr = ref.conv_relu_pool2x2_fwd(c.own(yt), c.own(bias))
    c.row("fused", f"fused conv epilogue fwd {(fa, na, ha, wa)}", y, yr)
    c.row("fused", f"fused conv epilogue argmax {(fa, na, ha, wa)}", arg, argr, 0.0)
    dy = c.data(*yr.shape)
    dy2, db = k.conv_relu_pool2x2_bwd(put(dy), arg, y, (ha, wa))
    dy2r, dbr = ref.conv_relu_pool2x2_bwd(c.own(dy), argr, yr, (ha, wa))
    c.row("fused", f"fused conv epilogue bwd {(fa, na, ha, wa)}", dy2, dy2r)
    c.row("fused", f"fused conv epilogue db {(fa, na, ha, wa)}", db, dbr)


def _elementwise(c: _Checker, sizes: Sizes) -> None:
    k, ref, put = c.k, c.ref, c.put
    a = c.data(*sizes.activations)
    tag = f"{sizes.activations}"
    y = k.relu_fwd(put(a))
    c.row("elementwise", f"relu fwd {tag}", y, ref.relu_fwd(c.own(a)))
    dy = c.data(*a.shape)
    c.row("elementwise", f"relu bwd {tag}", k.relu_bwd(put(dy), y),
          ref.relu_bwd(c.own(dy), ref.relu_fwd(c.own(a))))  # fmt: skip
    c.row("elementwise", f"dropout p=0.5 mask {tag}", k.dropout_fwd(put(a), 0.5, 12345),
          ref.dropout_fwd(c.own(a), 0.5, 12345))  # fmt: skip
    rows, classes = sizes.logits
    z, labels = c.data(rows, classes), c.g.integers(0, classes, rows)
    (loss, grad), (loss_r, grad_r) = (
        k.softmax_xent_fwd(put(z), put(labels)),
        ref.softmax_xent_fwd(c.own(z), labels),
    )
    c.row("elementwise", f"softmax cross-entropy loss {sizes.logits}", loss, loss_r)
    c.row("elementwise", f"softmax cross-entropy grad {sizes.logits}", grad, grad_r)


def _batchnorm(c: _Checker, sizes: Sizes) -> None:
    k, ref, put = c.k, c.ref, c.put
    a = c.data(*sizes.activations)
    ch = a.shape[1]
    gamma, beta = 1 + 0.1 * c.data(ch), 0.1 * c.data(ch)
    mean, var = np.zeros(ch, np.float32), np.ones(ch, np.float32)
    dm, dv = put(mean), put(var)
    rm, rv = c.own(mean), c.own(var)
    y, saved = k.batchnorm2d_fwd(put(a), put(gamma), put(beta), dm, dv, True, 0.1, 1e-5)
    yr, saved_r = ref.batchnorm2d_fwd(c.own(a), c.own(gamma), c.own(beta), rm, rv, True, 0.1,
                                      1e-5)  # fmt: skip
    tag = f"{sizes.activations}"
    c.row("batchnorm", f"batchnorm fwd {tag}", y, yr)
    c.row("batchnorm", f"batchnorm running stats {tag}", np.concatenate(
        [to_host(dm), to_host(dv)]), np.concatenate([rm, rv]))  # fmt: skip
    dy = c.data(*a.shape)
    got = k.batchnorm2d_bwd(put(dy), saved, put(gamma), True)
    want = ref.batchnorm2d_bwd(c.own(dy), saved_r, c.own(gamma), True)
    for name, g_, w_ in zip(("dx", "dgamma", "dbeta"), got, want, strict=True):
        c.row("batchnorm", f"batchnorm bwd {name} {tag}", g_, w_)


def _optimizers(c: _Checker, sizes: Sizes) -> None:
    k, ref, put = c.k, c.ref, c.put
    w, grad = c.data(*sizes.fc_weight), c.data(*sizes.fc_weight)
    state = [np.abs(c.data(*w.shape)) * 1e-2 for _ in range(3)]  # m, v, vmax after some steps
    kw = dict(step_size=1e-3, beta1=0.9, beta2=0.999, bias_correction2=2e-3, eps=1e-8,
              weight_decay=1e-5)  # fmt: skip
    wd, sd = put(w), [put(s) for s in state]
    wr, sr = c.own(w), [c.own(s) for s in state]
    k.adam_update(wd, put(grad), *sd, **kw)
    ref.adam_update(wr, c.own(grad), *sr, **kw)
    tag = f"{sizes.fc_weight}"
    c.row("optim", f"adam amsgrad step {tag}", wd, wr)
    c.row("optim", f"adam amsgrad moments {tag}",
          np.concatenate([to_host(s).ravel() for s in sd]),
          np.concatenate([s.ravel() for s in sr]))  # fmt: skip
    buf = c.data(*w.shape)
    wd, bd, wr, br = put(w), put(buf), c.own(w), c.own(buf)
    kw = dict(first=False, lr=1e-2, momentum=0.9, dampening=0.1, weight_decay=1e-4,
              nesterov=True)  # fmt: skip
    k.sgd_update(wd, put(grad), bd, **kw)
    ref.sgd_update(wr, c.own(grad), br, **kw)
    c.row("optim", f"sgd nesterov step {tag}", np.concatenate([to_host(wd), to_host(bd)]),
          np.concatenate([wr, br]))  # fmt: skip


def _batches(c: _Checker, sizes: Sizes, device: Backend) -> None:
    """The batch gathered on the device (and, on CUDA, the augmentation warp)."""
    k, ref, put = c.k, c.ref, c.put
    n = 3 * sizes.batch
    images = c.g.integers(0, 256, (n, *sizes.image), dtype=np.uint8)
    labels = c.g.integers(0, 10, n)
    perm = c.g.permutation(n).astype(np.int64)
    state = formulas.batch_state(0, 1)  # the second batch
    shape = (sizes.batch, *sizes.image)
    xd, yd = put(np.zeros(shape, np.float32)), put(np.zeros(sizes.batch, np.int64))
    k.gather_batch(put(images), put(labels), put(perm), put(state), sizes.batch, 0.13, 0.31,
                   xd, yd)  # fmt: skip
    xr, yr = np.zeros(shape, c.ref_dtype), np.zeros(sizes.batch, np.int64)
    ref.gather_batch(images, labels, perm, state, sizes.batch, 0.13, 0.31, xr, yr)
    c.row("batch", f"gather batch {shape}", xd, xr)
    c.row("batch", f"gather labels {shape}", yd, yr, 0.0)
    if device.name == "cpu":
        return  # the CPU's warp is NumPy itself: nothing compiled to check
    x = c.data(*shape)
    angle = c.g.uniform(-0.3, 0.3, sizes.batch)
    inv = np.stack([np.cos(angle), np.sin(angle), -np.sin(angle), np.cos(angle)], 1)
    inv, shift = inv.astype(np.float32), c.g.uniform(-2, 2, (sizes.batch, 2)).astype(np.float32)
    c.row("warp", f"affine warp {shape}", k.affine_warp(put(x), put(inv), put(shift)),
          ref.affine_warp(x, inv, shift))  # fmt: skip


def model_rows(device: Backend, sizes: Sizes = SMALL) -> list[Row]:  # noqa: B008
    """One batch through a model (the seed model by default) on ``device`` against its
    reference: the same model on the CPU (for CUDA) or its PyTorch twin (for the CPU; no rows
    without PyTorch). The loss and every parameter's gradient."""
    from gpucnn import models, nn

    build = sizes.model or (lambda: models.build("seed", seed=0))
    g = np.random.default_rng(1)
    x = g.standard_normal((sizes.batch, *sizes.image)).astype(np.float32)
    ours = build().to(device)
    classes = ours.output_shape(tuple(x.shape[1:]))[0]
    y = g.integers(0, classes, sizes.batch)
    crit = nn.CrossEntropyLoss()
    loss = float(crit(ours(device.asarray(x)), device.asarray(y)))
    ours.backward(crit.backward())
    mine = {n: to_host(p.grad) for n, p in ours.named_parameters()}
    if device.name == "cpu":
        from gpucnn.doctor import torch_twin

        if not torch_twin.installed():
            return []
        import torch

        theirs = torch_twin.twin(build())
        out = torch.nn.functional.cross_entropy(theirs(torch.as_tensor(x)), torch.as_tensor(y))
        out.backward()
        want_loss = float(out.detach())
        want = {n: p.grad.numpy() for n, p in theirs.named_parameters()}
        against = "PyTorch"
    else:
        ref = build()
        want_loss = float(crit(ref(x), y))
        ref.backward(crit.backward())
        want = {n: to_host(p.grad) for n, p in ref.named_parameters()}
        against = "the CPU"
    rows = [Row("model", f"model loss vs {against}, batch {sizes.batch}",
                abs(loss - want_loss), LOSS_TOL)]  # fmt: skip
    for name, got in mine.items():
        scale = float(np.abs(want[name]).max()) + 1e-12
        diff = float(np.abs(got - want[name]).max()) / scale
        rows.append(Row("model", f"grad {name} vs {against} (relative)", diff, GRAD_TOL))
    return rows
