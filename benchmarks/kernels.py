"""Per-op timings on the CPU: gpucnn vs a naive NumPy loop vs PyTorch, side by side.

    python benchmarks/kernels.py [--repeat 20] [--threads 2] [--out FILE] [--fused-only]
        [--direct-only]
    python benchmarks/kernels.py --device cuda [--batches 64,512] [--repeat 20] [--out FILE]

Forward + backward of conv, max-pool and linear at the seed model's shapes (batch 64) and a
couple of larger ones. Each is warmed up, then timed ``--repeat`` times; the table shows
medians in milliseconds and the ratios. The naive loop visits output pixels one at a time
with NumPy doing the per-pixel work (the textbook formula, vectorised over batch and channels
only), to show what im2col + GEMM buys.

A second table is an A/B of the seed model's conv blocks, Conv2d -> ReLU -> MaxPool2d(2),
forward + backward: the layers' functional ops one by one against the fused op
(functional.conv2d_relu_maxpool_*), taking turns in rounds in this one process (the median of
the rounds' medians), with PyTorch's three ops beside them. The first block computes no dx, as
in the model. ``--fused-only`` prints that table alone.

A third table is an A/B of the seed model's first conv (one channel, 3x3: 9 taps) through
im2col + GEMM and through the direct kernels (gpucnn.backend.cpu.direct, the setting
DIRECT_CONV_MAX_TAPS), forward and the weight gradient, in rounds as above.
``--direct-only`` prints that table alone (batches 64 and 256).

On a GPU (``--device cuda [--batches 64,512]``): per-kernel GPU time, gpucnn against the
PyTorch/cuDNN op (and the GEMM kernel against cuBLAS through CuPy) at the seed model's shapes:
conv forward and backward (each seed conv; the first computes no dx, as in the model, and is
timed twice: through im2col + GEMM and through the direct kernels), max-pool
forward and backward (the seed pools and an overlapping 3x3/2/1), ReLU, softmax
cross-entropy, BatchNorm2d, the fused Conv + ReLU + MaxPool2d(2) block (and gpucnn's layers one
by one) against PyTorch's three ops, and every GEMM of the seed step with the operands laid
out as the step passes them. Two measures per op and library: "GPU us", the sum of the
durations of the kernels (and copies) one call puts on the device, from CUPTI (torch.profiler
sees every kernel of the process; one profiling session, the cases told apart by a marker
kernel launched between them), and "event us", CUDA events around ``--repeat`` calls in a row,
which also counts the device's idle gaps while the host launches (what an eager step pays).
The ratio is gpucnn / reference on GPU us (event us where CUPTI is unavailable).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpucnn import functional as F  # noqa: E402

# (name, kind, x shape, params)
CASES = [
    ("conv1 seed 1→32 3x3 p1", "conv", (64, 1, 28, 28), (32, 3, 1, 1)),
    ("conv2 seed 32→64 3x3 p1", "conv", (64, 32, 14, 14), (64, 3, 1, 1)),
    ("conv 64→128 3x3 s2 p1", "conv", (64, 64, 14, 14), (128, 3, 2, 1)),
    ("conv 3→64 5x5 p2 (32x32)", "conv", (32, 3, 32, 32), (64, 5, 1, 2)),
    ("maxpool seed 2x2 (32ch 28x28)", "pool", (64, 32, 28, 28), (2, 2, 0)),
    ("maxpool seed 2x2 (64ch 14x14)", "pool", (64, 64, 14, 14), (2, 2, 0)),
    ("maxpool 3x3 s2 p1", "pool", (64, 64, 28, 28), (3, 2, 1)),
    ("fc1 seed 3136→128", "linear", (64, 3136), (128,)),
    ("fc 4096→1024", "linear", (64, 4096), (1024,)),
]


# (name, x shape, filters): the seed model's blocks, 3x3 pad 1
FUSED_CASES = [
    ("seed block 1: conv 1→32 + ReLU + pool", (1, 28, 28), 32),
    ("seed block 2: conv 32→64 + ReLU + pool", (32, 14, 14), 64),
]


def median_ms(fn, repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def ours(kind, x, p, g):
    if kind == "conv":
        f, k, s, pad = p
        w = g.standard_normal((f, x.shape[1], k, k)).astype(np.float32)
        b = np.zeros(f, np.float32)

        def run():
            y, cache = F.conv2d_forward(x, w, b, s, pad)
            F.conv2d_backward(np.ones_like(y), cache)
    elif kind == "pool":
        k, s, pad = p

        def run():
            y, cache = F.maxpool2d_forward(x, k, s, pad)
            F.maxpool2d_backward(np.ones_like(y), cache)
    else:
        w = g.standard_normal((p[0], x.shape[1])).astype(np.float32)
        b = np.zeros(p[0], np.float32)

        def run():
            y, cache = F.linear_forward(x, w, b)
            F.linear_backward(np.ones_like(y), cache)

    return run


def naive(kind, x, p, g):
    """Output pixel by output pixel; NumPy only across batch and channels."""
    if kind == "conv":
        f, k, s, pad = p
        w = g.standard_normal((f, x.shape[1], k, k)).astype(np.float32)
        n, c, h, wd = x.shape
        oh, ow = (h + 2 * pad - k) // s + 1, (wd + 2 * pad - k) // s + 1
        wm = w.reshape(f, -1)

        def run():
            xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
            y = np.empty((n, f, oh, ow), np.float32)
            for i in range(oh):
                for j in range(ow):
                    win = xp[:, :, i * s : i * s + k, j * s : j * s + k].reshape(n, -1)
                    y[:, :, i, j] = win @ wm.T
            dy = np.ones_like(y)
            dxp, dw = np.zeros_like(xp), np.zeros_like(wm)
            for i in range(oh):
                for j in range(ow):
                    win = xp[:, :, i * s : i * s + k, j * s : j * s + k].reshape(n, -1)
                    dw += dy[:, :, i, j].T @ win
                    dxp[:, :, i * s : i * s + k, j * s : j * s + k] += (
                        dy[:, :, i, j] @ wm
                    ).reshape(n, c, k, k)
    elif kind == "pool":
        k, s, pad = p
        n, c, h, wd = x.shape
        oh, ow = (h + 2 * pad - k) // s + 1, (wd + 2 * pad - k) // s + 1

        def run():
            xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
            y = np.empty((n, c, oh, ow), np.float32)
            dxp = np.zeros_like(xp)
            for i in range(oh):
                for j in range(ow):
                    win = xp[:, :, i * s : i * s + k, j * s : j * s + k].reshape(n, c, -1)
                    a = win.argmax(axis=2)
                    y[:, :, i, j] = np.take_along_axis(win, a[..., None], 2)[..., 0]
                    view = dxp[:, :, i * s : i * s + k, j * s : j * s + k].reshape(n, c, -1).copy()
                    np.put_along_axis(view, a[..., None], 1.0, axis=2)
                    dxp[:, :, i * s : i * s + k, j * s : j * s + k] += view.reshape(n, c, k, k)
    else:
        w = g.standard_normal((p[0], x.shape[1])).astype(np.float32)

        def run():
            y = np.stack([x[i] @ w.T for i in range(len(x))])
            dy = np.ones_like(y)
            sum(np.outer(dy[i], x[i]) for i in range(len(x)))
            np.stack([dy[i] @ w for i in range(len(x))])

    return run


def torch_fn(kind, x, p, g):
    import torch

    xt = torch.from_numpy(x).requires_grad_(True)
    if kind == "conv":
        f, k, s, pad = p
        w = torch.randn(f, x.shape[1], k, k, requires_grad=True)
        b = torch.zeros(f, requires_grad=True)

        def run():
            y = torch.nn.functional.conv2d(xt, w, b, s, pad)
            y.backward(torch.ones_like(y))
    elif kind == "pool":
        k, s, pad = p

        def run():
            y = torch.nn.functional.max_pool2d(xt, k, s, pad)
            y.backward(torch.ones_like(y))
    else:
        w = torch.randn(p[0], x.shape[1], requires_grad=True)
        b = torch.zeros(p[0], requires_grad=True)

        def run():
            y = torch.nn.functional.linear(xt, w, b)
            y.backward(torch.ones_like(y))

    return run


def block_fns(x, w, b):
    """(unfused, fused, torch) forward + backward of Conv2d(pad 1) -> ReLU -> MaxPool2d(2)."""
    need_dx = x.shape[1] > 1  # a first layer computes no dx

    def unfused():
        z, c_conv = F.conv2d_forward(x, w, b, 1, 1)
        m, c_pool = F.maxpool2d_forward(z, 2, 2, 0)
        y, c_relu = F.relu_forward(m)  # Sequential runs the ReLU after the pool
        d = F.maxpool2d_backward(F.relu_backward(np.ones_like(y), c_relu), c_pool)
        F.conv2d_backward(d, c_conv, need_dx=need_dx)

    def fused():
        y, cache = F.conv2d_relu_maxpool_forward(x, w, b, 1, 1)
        F.conv2d_relu_maxpool_backward(np.ones_like(y), cache, need_dx=need_dx)

    def torch_block():
        import torch

        xt = torch.from_numpy(x).requires_grad_(need_dx)
        wt = torch.from_numpy(w).requires_grad_(True)
        bt = torch.from_numpy(b).requires_grad_(True)
        y = torch.nn.functional.max_pool2d(
            torch.relu(torch.nn.functional.conv2d(xt, wt, bt, 1, 1)), 2
        )
        y.backward(torch.ones_like(y))

    return unfused, fused, torch_block


def fused_rows(repeat: int, batches: tuple[int, ...], has_torch: bool, rounds: int = 5) -> list:
    rows = [
        "| block (forward + backward) | batch | unfused ms | fused ms | unfused / fused | "
        "PyTorch ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    g = np.random.default_rng(0)
    for batch in batches:
        for name, shape, f in FUSED_CASES:
            x = g.standard_normal((batch, *shape)).astype(np.float32)
            w = (0.1 * g.standard_normal((f, shape[0], 3, 3))).astype(np.float32)
            b = (0.1 * g.standard_normal(f)).astype(np.float32)
            unfused, fused, torch_block = block_fns(x, w, b)
            times: dict[str, list[float]] = {"unfused": [], "fused": []}
            for _ in range(rounds):  # the two take turns
                times["unfused"].append(median_ms(unfused, repeat))
                times["fused"].append(median_ms(fused, repeat))
            t_un, t_fu = (statistics.median(times[k]) for k in ("unfused", "fused"))
            t_torch = median_ms(torch_block, repeat) if has_torch else float("nan")
            rows.append(
                f"| {name} | {batch} | {t_un:.2f} | {t_fu:.2f} | {t_un / t_fu:.2f}x | "
                f"{t_torch:.2f} |"
            )
            print(rows[-1], flush=True)
    return rows


def direct_rows(repeat: int, batches: tuple[int, ...], rounds: int = 5) -> list:
    """The seed model's first conv (1 -> 32, 3x3 pad 1, no dx) through im2col + GEMM and
    through the direct kernels (gpucnn.backend.cpu.direct), taking turns in rounds."""
    from gpucnn.backend import cpu

    rows = [
        "| conv1 1→32 3x3 p1 (28x28) | batch | im2col + GEMM ms | direct ms | direct / im2col |",
        "|---|---:|---:|---:|---:|",
    ]
    g = np.random.default_rng(0)
    was = cpu.DIRECT_CONV_MAX_TAPS
    try:
        for batch in batches:
            x = g.standard_normal((batch, 1, 28, 28)).astype(np.float32)
            w = (0.1 * g.standard_normal((32, 1, 3, 3))).astype(np.float32)
            b = (0.1 * g.standard_normal(32)).astype(np.float32)
            dy = g.standard_normal((batch, 32, 28, 28)).astype(np.float32)
            for what in ("forward", "backward (dw, db)"):
                times: dict[int, list[float]] = {0: [], 9: []}
                for _ in range(rounds):
                    for taps in (0, 9):  # DIRECT_CONV_MAX_TAPS: off, then on for 9 taps
                        cpu.DIRECT_CONV_MAX_TAPS = taps
                        _, cache = F.conv2d_forward(x, w, b, 1, 1)
                        fn = (
                            (lambda: F.conv2d_forward(x, w, b, 1, 1))
                            if what == "forward"
                            else (lambda c=cache: F.conv2d_backward(dy, c, need_dx=False))
                        )
                        times[taps].append(median_ms(fn, repeat))
                t_cols, t_direct = (statistics.median(times[k]) for k in (0, 9))
                rows.append(
                    f"| {what} | {batch} | {t_cols:.2f} | {t_direct:.2f} | "
                    f"{t_direct / t_cols:.2f} |"
                )
                print(rows[-1], flush=True)
    finally:
        cpu.DIRECT_CONV_MAX_TAPS = was
    return rows


# -- the GPU: per-kernel time, gpucnn vs PyTorch/cuDNN and cuBLAS ---------------------------


@dataclasses.dataclass(frozen=True)
class SeedShapes:
    """The seed model's sizes (the tests shrink them to run in the CUDA simulator)."""

    image: int = 28
    c1: int = 32
    c2: int = 64
    hidden: int = 128
    classes: int = 10

    @property
    def fc_in(self) -> int:
        return self.c2 * (self.image // 4) ** 2


@dataclasses.dataclass
class Case:
    """One op at one batch: ``make()`` allocates its inputs and returns (ours, ref), two
    callables that each run the op once; ``ref_lib`` is "torch" or "cupy" (cuBLAS)."""

    group: str
    name: str
    make: Callable[[], tuple[Callable[[], Any], Callable[[], Any]]]
    ref_lib: str = "torch"


def device_sync() -> None:
    """Wait for everything queued on the GPU (every stream, every library in the process)."""
    import cupy

    device = getattr(cupy.cuda, "Device", None)
    if device is not None:
        device().synchronize()
    else:  # the simulator's stand-in CuPy: one stream
        cupy.cuda.get_current_stream().synchronize()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def event_us(fn: Callable[[], Any], lib: str, repeat: int = 20, warmup: int = 3) -> float:
    """Microseconds per call of ``fn`` between two CUDA events recorded on the stream the
    library launches on (``lib``: "cupy" for gpucnn and CuPy, "torch"), ``repeat`` calls in a
    row after ``warmup``; synchronised wall time where there are no events (the simulator,
    torch on the CPU)."""
    for _ in range(warmup):
        fn()
    device_sync()
    torch = sys.modules.get("torch")
    if lib == "torch" and torch is not None and torch.cuda.is_available():
        start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        end.synchronize()
        return 1e3 * start.elapsed_time(end) / repeat
    import cupy

    if lib == "cupy" and hasattr(cupy.cuda, "Event"):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        end.synchronize()
        return 1e3 * cupy.cuda.get_elapsed_time(start, end) / repeat
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    device_sync()
    return 1e6 * (time.perf_counter() - t0) / repeat


MARKER = "cupti_marker_kernel"


@functools.cache
def _marker() -> tuple[Any, Any]:
    """A one-thread kernel whose name splits a profile into segments, and its argument."""
    import cupy

    from gpucnn.backend.numba_cuda import cuda

    def cupti_marker_kernel(flag):  # pragma: no cover - device code
        flag[0] += 1

    return cuda.jit(cupti_marker_kernel), cupy.zeros(1, dtype=np.int32)


def split_segments(events: list[tuple[str, float, float]], n: int) -> list[tuple[int, float]]:
    """Device activities (name, start, duration us) of a profile -> (count, total us) of each
    of the ``n`` segments that follow a marker kernel, in time order.

    Raises:
        ValueError: the profile holds another number of markers than ``n`` (lost records).
    """
    segments: list[list[float]] = []
    for name, _, duration in sorted(events, key=lambda e: e[1]):
        if MARKER in name:
            segments.append([0, 0.0])
        elif segments:
            segments[-1][0] += 1
            segments[-1][1] += duration
    if len(segments) != n:
        raise ValueError(f"the profile holds {len(segments)} markers for {n} segments")
    return [(int(c), float(us)) for c, us in segments]


def cupti_available() -> str | None:
    """Why CUPTI through torch.profiler cannot time this process's kernels, or None."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile  # noqa: F401
    except ImportError as exc:
        return f"no torch.profiler ({exc})"
    if not torch.cuda.is_available():
        return "torch has no CUDA here"
    return None


def cupti_segments(
    runs: list[tuple[str, Callable[[], Any]]], repeat: int = 1
) -> dict[str, tuple[float, float]]:
    """{label: (device activities per call, their GPU us per call)} of each (label, fn), each
    called ``repeat`` times in one torch.profiler session (CUPTI: the kernels, copies and sets
    of every library in the process), after a marker kernel that tells them apart.

    Raises:
        RuntimeError: CUPTI is unavailable (the reason); ValueError: records were lost.
    """
    why = cupti_available()
    if why is not None:
        raise RuntimeError(why)
    from torch.profiler import ProfilerActivity, profile

    marker, flag = _marker()
    device_sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _, fn in runs:
            device_sync()
            marker[1, 1](flag)
            device_sync()
            for _ in range(repeat):
                fn()
            device_sync()
    events = [
        (e.name, e.time_range.start, e.time_range.elapsed_us())
        for e in prof.events()
        if e.device_type.name == "CUDA"
    ]
    segments = split_segments(events, len(runs))
    return {
        label: (count / repeat, us / repeat)
        for (label, _), (count, us) in zip(runs, segments, strict=True)
    }


def cuda_cases(batch: int, shapes: SeedShapes = SeedShapes(), torch_device: str = "cuda"):  # noqa: B008
    """The ops of a seed training step at ``batch`` (see the module docstring)."""
    import cupy
    import torch

    from gpucnn.backend import cuda as gpu

    tf = torch.nn.functional
    g = np.random.default_rng(0)
    n, s = batch, shapes
    h1, h2 = s.image, s.image // 2

    def host(*shape, scale=1.0):
        return (scale * g.standard_normal(shape)).astype(np.float32)

    def tt(a, grad=False):
        return torch.as_tensor(a).to(torch_device).requires_grad_(grad)

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()

        return run

    def grads(out, inputs, dy):
        dyt = tt(dy)
        return lambda: torch.autograd.grad(out, inputs, dyt, retain_graph=True)

    cases: list[Case] = []

    def conv(name, c, f, hw, need_dx, direct=False):
        shape = (n, c, hw, hw)
        label = f"{name} {c}→{f} 3x3 p1 ({hw}x{hw})" + (" direct" if direct else "")

        def ours(fn):  # with direct=True, through the direct kernels (cuda/direct.py)
            def run():
                was = gpu.DIRECT_CONV_MAX_TAPS
                gpu.DIRECT_CONV_MAX_TAPS = c * 9 if direct else 0
                try:
                    return fn()
                finally:
                    gpu.DIRECT_CONV_MAX_TAPS = was

            return run

        def inputs():
            return host(*shape), host(f, c, 3, 3, scale=0.1), host(f, scale=0.1)

        def fwd():
            x, w, b = inputs()
            xd, wd, bd = cupy.asarray(x), cupy.asarray(w), cupy.asarray(b)
            xt, wt, bt = tt(x), tt(w), tt(b)
            return (
                ours(lambda: F.conv2d_forward(xd, wd, bd, 1, 1)),
                no_grad(lambda: tf.conv2d(xt, wt, bt, 1, 1)),
            )

        def bwd():
            x, w, b = inputs()
            dy = host(n, f, hw, hw)
            xd, wd, bd = cupy.asarray(x), cupy.asarray(w), cupy.asarray(b)
            _, cache = ours(lambda: F.conv2d_forward(xd, wd, bd, 1, 1))()
            dyd = cupy.asarray(dy)
            xt, wt, bt = tt(x, need_dx), tt(w, True), tt(b, True)
            y = tf.conv2d(xt, wt, bt, 1, 1)
            return (
                lambda: F.conv2d_backward(dyd, cache, need_dx=need_dx),
                grads(y, [xt, wt, bt] if need_dx else [wt, bt], dy),
            )

        cases.append(Case("conv", f"{label} fwd", fwd))
        what = "dx, dw, db" if need_dx else "dw, db; no dx"
        cases.append(Case("conv", f"{label} bwd ({what})", bwd))

    conv("conv1", 1, s.c1, h1, False)
    conv("conv1", 1, s.c1, h1, False, direct=True)  # DIRECT_CONV_MAX_TAPS: on or not
    conv("conv2", s.c1, s.c2, h2, True)

    def pool(c, hw, k, stride, pad):
        shape = (n, c, hw, hw)
        oh = (hw + 2 * pad - k) // stride + 1
        label = f"maxpool {k}x{k}/{stride}" + (f" pad {pad}" if pad else "") + f" ({c}x{hw}x{hw})"

        def fwd():
            x = host(*shape)
            xd, xt = cupy.asarray(x), tt(x)
            return (
                lambda: F.maxpool2d_forward(xd, k, stride, pad),
                no_grad(lambda: tf.max_pool2d(xt, k, stride, pad)),
            )

        def bwd():
            x, dy = host(*shape), host(n, c, oh, oh)
            _, cache = F.maxpool2d_forward(cupy.asarray(x), k, stride, pad)
            dyd, xt = cupy.asarray(dy), tt(x, True)
            y = tf.max_pool2d(xt, k, stride, pad)
            return lambda: F.maxpool2d_backward(dyd, cache), grads(y, [xt], dy)

        cases.append(Case("pool", f"{label} fwd", fwd))
        cases.append(Case("pool", f"{label} bwd", bwd))

    pool(s.c1, h1, 2, 2, 0)
    pool(s.c2, h2, 2, 2, 0)
    pool(s.c2, h1, 3, 2, 1)

    relu_shape = (n, s.c1, h2, h2)  # Sequential runs the ReLU after the pool

    def relu_fwd():
        x = host(*relu_shape)
        xd, xt = cupy.asarray(x), tt(x)
        return lambda: F.relu_forward(xd), no_grad(lambda: torch.relu(xt))

    def relu_bwd():
        x, dy = host(*relu_shape), host(*relu_shape)
        _, cache = F.relu_forward(cupy.asarray(x))
        dyd, xt = cupy.asarray(dy), tt(x, True)
        return lambda: F.relu_backward(dyd, cache), grads(torch.relu(xt), [xt], dy)

    label = f"ReLU ({s.c1}x{h2}x{h2})"
    cases += [Case("relu", f"{label} fwd", relu_fwd), Case("relu", f"{label} bwd", relu_bwd)]

    def xent():
        z = host(n, s.classes)
        y = g.integers(0, s.classes, n)
        zd, yd = cupy.asarray(z), cupy.asarray(y)
        zt, yt = tt(z, True), torch.as_tensor(y).to(torch_device)

        def ours():
            _, cache = F.cross_entropy_forward(zd, yd)
            return F.cross_entropy_backward(cache)

        return ours, lambda: torch.autograd.grad(tf.cross_entropy(zt, yt), [zt])

    cases.append(Case("loss", f"softmax cross-entropy fwd+bwd ({s.classes} classes)", xent))

    bn_shape = (n, s.c1, h1, h1)

    def bn_inputs():
        x = host(*bn_shape)
        ones, zeros = np.ones(s.c1, np.float32), np.zeros(s.c1, np.float32)
        return x, ones, zeros

    def bn_fwd():
        x, ones, zeros = bn_inputs()
        xd, gd, bd = cupy.asarray(x), cupy.asarray(ones), cupy.asarray(zeros)
        rm, rv = cupy.asarray(zeros), cupy.asarray(ones)
        xt, gt, bt, rmt, rvt = tt(x), tt(ones), tt(zeros), tt(zeros), tt(ones)
        return (
            lambda: F.batchnorm2d_forward(xd, gd, bd, rm, rv, True, 0.1, 1e-5),
            no_grad(lambda: tf.batch_norm(xt, rmt, rvt, gt, bt, True, 0.1, 1e-5)),
        )

    def bn_bwd():
        x, ones, zeros = bn_inputs()
        dy = host(*bn_shape)
        rm, rv = cupy.asarray(zeros), cupy.asarray(ones)
        _, cache = F.batchnorm2d_forward(
            cupy.asarray(x), cupy.asarray(ones), cupy.asarray(zeros), rm, rv, True, 0.1, 1e-5
        )
        dyd = cupy.asarray(dy)
        xt, gt, bt = tt(x, True), tt(ones, True), tt(zeros, True)
        y = tf.batch_norm(xt, tt(zeros), tt(ones), gt, bt, True, 0.1, 1e-5)
        return lambda: F.batchnorm2d_backward(dyd, cache), grads(y, [xt, gt, bt], dy)

    label = f"BatchNorm2d train ({s.c1}x{h1}x{h1})"
    cases += [
        Case("batchnorm", f"{label} fwd", bn_fwd),
        Case("batchnorm", f"{label} bwd", bn_bwd),
    ]

    def block(name, c, f, hw):
        need_dx = c > 1  # a first layer computes no dx
        shape, out = (n, c, hw, hw), (n, f, hw // 2, hw // 2)
        label = f"{name} conv {c}→{f} + ReLU + maxpool 2x2 ({hw}x{hw})"

        def prepared():
            x, w, b, dy = host(*shape), host(f, c, 3, 3, scale=0.1), host(f, scale=0.1), host(*out)
            xt, wt, bt = tt(x, need_dx), tt(w, True), tt(b, True)
            yt = tf.max_pool2d(torch.relu(tf.conv2d(xt, wt, bt, 1, 1)), 2)
            ref_bwd = grads(yt, [xt, wt, bt] if need_dx else [wt, bt], dy)
            xf, wf, bf = tt(x), tt(w), tt(b)
            ref_fwd = no_grad(lambda: tf.max_pool2d(torch.relu(tf.conv2d(xf, wf, bf, 1, 1)), 2))
            devs = tuple(cupy.asarray(a) for a in (x, w, b, dy))
            return devs, ref_fwd, ref_bwd

        def unfused_fwd(x, w, b):
            z, c_conv = F.conv2d_forward(x, w, b, 1, 1)
            m, c_pool = F.maxpool2d_forward(z, 2, 2, 0)
            y, c_relu = F.relu_forward(m)
            return y, (c_conv, c_pool, c_relu)

        def unfused_bwd(dy, caches):
            c_conv, c_pool, c_relu = caches
            d = F.maxpool2d_backward(F.relu_backward(dy, c_relu), c_pool)
            return F.conv2d_backward(d, c_conv, need_dx=need_dx)

        def make(fused, backward):
            def build():
                (x, w, b, dy), ref_fwd, ref_bwd = prepared()
                if fused:
                    fwd = lambda: F.conv2d_relu_maxpool_forward(x, w, b, 1, 1)  # noqa: E731
                    _, cache = fwd()
                    bwd = lambda: F.conv2d_relu_maxpool_backward(dy, cache, need_dx=need_dx)  # noqa: E731
                else:
                    fwd = lambda: unfused_fwd(x, w, b)  # noqa: E731
                    _, caches = fwd()
                    bwd = lambda: unfused_bwd(dy, caches)  # noqa: E731
                return (bwd, ref_bwd) if backward else (fwd, ref_fwd)

            return build

        for backward in (False, True):
            for fused in (True, False):
                kind = "fused" if fused else "unfused (gpucnn's layers one by one)"
                cases.append(
                    Case("fused", f"{label} {'bwd' if backward else 'fwd'}, {kind}",
                         make(fused, backward))
                )  # fmt: skip

    block("block 1:", 1, s.c1, h1)
    block("block 2:", s.c1, s.c2, h2)

    # every GEMM of the seed step, with the operands laid out as the step passes them:
    # (name, (rows, cols) of a, a transposed?, (rows, cols) of b, b transposed?)
    nhw1, nhw2, k1, k2 = n * h1 * h1, n * h2 * h2, 9, 9 * s.c1
    gemms = [
        ("conv1 forward Wm @ cols", (s.c1, k1), False, (k1, nhw1), False),
        ("conv1 dW = dY @ cols.T", (s.c1, nhw1), False, (k1, nhw1), True),
        ("conv2 forward Wm @ cols", (s.c2, k2), False, (k2, nhw2), False),
        ("conv2 dW = dY @ cols.T", (s.c2, nhw2), False, (k2, nhw2), True),
        ("conv2 dcols = Wm.T @ dY", (s.c2, k2), True, (s.c2, nhw2), False),
        ("fc1 forward x @ W.T", (n, s.fc_in), False, (s.hidden, s.fc_in), True),
        ("fc1 dx = dy @ W", (n, s.hidden), False, (s.hidden, s.fc_in), False),
        ("fc1 dW = dy.T @ x", (n, s.hidden), True, (n, s.fc_in), False),
        ("fc2 forward x @ W.T", (n, s.hidden), False, (s.classes, s.hidden), True),
        ("fc2 dx = dy @ W", (n, s.classes), False, (s.classes, s.hidden), False),
        ("fc2 dW = dy.T @ x", (n, s.classes), True, (n, s.hidden), False),
    ]

    def gemm(a_shape, trans_a, b_shape, trans_b):
        def build():
            a = cupy.asarray(host(*a_shape))
            b = cupy.asarray(host(*b_shape))
            a, b = (a.T if trans_a else a), (b.T if trans_b else b)
            (m, k), cols = a.shape, b.shape[1]
            out, ref_out = (cupy.empty((m, cols), np.float32) for _ in range(2))
            size = gpu.gemm_workspace_size(m, cols, k)
            ws = cupy.empty(size, np.float32) if size else None
            return (
                lambda: gpu.gemm(a, b, out, workspace=ws),
                lambda: cupy.matmul(a, b, out=ref_out),
            )

        return build

    for name, a_shape, trans_a, b_shape, trans_b in gemms:
        a_rows, a_cols = a_shape[::-1] if trans_a else a_shape
        b_cols = b_shape[0] if trans_b else b_shape[1]
        label = f"{name} ({a_rows}x{a_cols} @ {a_cols}x{b_cols})"
        cases.append(Case("gemm", label, gemm(a_shape, trans_a, b_shape, trans_b), "cupy"))
    return cases


CUDA_HEADER = [
    "| op | batch | gpucnn GPU us | ref GPU us | gpucnn / ref | kernels gpucnn / ref | "
    "gpucnn event us | ref event us | ref |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---|",
]


def _fmt(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def cuda_rows(
    batches: tuple[int, ...] = (64, 512),
    repeat: int = 20,
    warmup: int = 3,
    shapes: SeedShapes = SeedShapes(),  # noqa: B008
    torch_device: str = "cuda",
    time_left: Callable[[], float] | None = None,
    profile_repeat: int = 3,
    echo: bool = True,
) -> list[str]:
    """The markdown rows of the per-kernel table (header included), case by case: each timed
    with events, then all of a batch's cases profiled in one CUPTI session. A case that fails
    is a row saying so; with ``time_left`` (seconds), cases are skipped when it runs out."""
    from gpucnn.backend import get_backend

    get_backend("cuda").prepare()  # gpucnn's one stream, current for CuPy and Numba
    rows = list(CUDA_HEADER)
    why_no_cupti = cupti_available()
    for batch in batches:
        timed = []  # (case, ours, ref, event us ours, event us ref)
        for case in cuda_cases(batch, shapes, torch_device):
            if time_left is not None and time_left() < 2:
                rows.append(f"| {case.name} | {batch} | skipped: out of time |||||||")
                continue
            try:
                ours, ref = case.make()
                ev = (
                    event_us(ours, "cupy", repeat, warmup),
                    event_us(ref, case.ref_lib, repeat, warmup),
                )
                timed.append((case, ours, ref, *ev))
            except Exception as exc:  # report and go on
                rows.append(
                    f"| {case.name} | {batch} | failed: {type(exc).__name__}: {exc} |||||||"
                )
        prof: dict[str, tuple[float, float]] = {}
        note = why_no_cupti
        if why_no_cupti is None and timed and time_left is not None and time_left() < 5:
            note = "out of time"
        elif why_no_cupti is None and timed:
            runs = []
            for i, (_, ours, ref, *_) in enumerate(timed):
                runs += [(f"{i} ours", ours), (f"{i} ref", ref)]
            try:
                prof = cupti_segments(runs, profile_repeat)
            except Exception as exc:
                note = f"{type(exc).__name__}: {exc}"
        if note is not None:
            rows.append(f"| (batch {batch}: no CUPTI GPU times: {note}) ||||||||| ")
        for i, (case, _, _, ev_ours, ev_ref) in enumerate(timed):
            ours_k, ours_us = prof.get(f"{i} ours", (None, None))
            ref_k, ref_us = prof.get(f"{i} ref", (None, None))
            if ours_us is not None and ref_us:
                ratio = ours_us / ref_us
            else:
                ratio = ev_ours / ev_ref if ev_ref else None
            kernels = "n/a" if ours_k is None else f"{ours_k:.0f} / {ref_k:.0f}"
            ref_name = "cuBLAS (CuPy)" if case.ref_lib == "cupy" else "PyTorch"
            rows.append(
                f"| {case.name} | {batch} | {_fmt(ours_us)} | {_fmt(ref_us)} | "
                f"{_fmt(ratio, 2)} | {kernels} | {ev_ours:.1f} | {ev_ref:.1f} | {ref_name} |"
            )
            if echo:
                print(rows[-1], flush=True)
    return rows


def cuda_report(batches: tuple[int, ...], repeat: int, **kw: Any) -> str:
    import cupy
    import torch

    try:
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:
        name = "an unnamed device"
    rows = cuda_rows(batches, repeat, **kw)
    return "\n".join(
        [
            "# GPU kernels: gpucnn vs PyTorch/cuDNN and cuBLAS",
            "",
            f"{name}; cupy {cupy.__version__}, torch {torch.__version__} "
            f"(cuDNN {torch.backends.cudnn.version()}).",
            "",
            "GPU us: the kernels one call puts on the device (CUPTI), per call; event us: CUDA "
            f"events around {repeat} calls in a row, per call (launch gaps included). "
            "gpucnn / ref < 1: gpucnn is faster.",
            "",
            *rows,
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=None)
    ap.add_argument("--fused-only", action="store_true", help="only the fused-block A/B")
    ap.add_argument(
        "--direct-only", action="store_true", help="only the direct-vs-im2col first-conv A/B"
    )
    ap.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the per-kernel GPU table"
    )
    ap.add_argument("--batches", default="64,512", help="cuda: comma list of batch sizes")
    args = ap.parse_args()
    if args.device == "cuda":
        batches = tuple(int(b) for b in args.batches.split(","))
        text = cuda_report(batches, args.repeat, echo=False)
        print("\n" + text)
        if args.out:
            Path(args.out).write_text(text + "\n")
        return
    from gpucnn.backend import CPU

    # as the Trainer does; both libraries run in this one process, so both get it
    CPU.prepare()
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    from benchmarks.machine import describe

    rows = []
    if args.direct_only:
        rows = direct_rows(args.repeat, (64, 256))
    elif not args.fused_only:
        rows = [
            "| op (forward + backward) | gpucnn ms | naive loop ms | PyTorch ms | "
            "naive / gpucnn | gpucnn / PyTorch |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        g = np.random.default_rng(0)
        for name, kind, shape, p in CASES:
            x = g.standard_normal(shape).astype(np.float32)
            t_ours = median_ms(ours(kind, x, p, g), args.repeat)
            t_naive = median_ms(naive(kind, x, p, g), max(3, args.repeat // 5), warmup=1)
            t_torch = median_ms(torch_fn(kind, x, p, g), args.repeat) if torch else float("nan")
            rows.append(
                f"| {name} | {t_ours:.2f} | {t_naive:.1f} | {t_torch:.2f} | "
                f"{t_naive / t_ours:.1f}x | {t_ours / t_torch:.2f} |"
            )
            print(rows[-1], flush=True)
        rows.append("")
    if not args.direct_only:
        rows += fused_rows(args.repeat, (32, 64), torch is not None)
    if not (args.fused_only or args.direct_only):
        rows += ["", *direct_rows(args.repeat, (64,))]
    text = "\n".join(
        [
            f"# CPU kernels, {args.threads} threads",
            "",
            describe(),
            "",
            "Medians in ms; gpucnn / PyTorch < 1 means gpucnn is faster; unfused / fused > 1 "
            "means the fused block is faster; direct / im2col > 1 means im2col is faster.",
            "",
            *rows,
        ]
    )
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
