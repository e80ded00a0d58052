"""Parts (d), (k) and (b) of benchmarks/gpu_check.py: launches per step and per-kernel timings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import kernels as kernel_bench
from benchmarks.gpu_parts.common import (
    MNIST_MEAN,
    MNIST_STD,
    PART_TITLES,
    POOL_TIMING_SHAPES,
    SEED_WINDOW_SHAPES,
    UNLIMITED,
    Budget,
    StepSizes,
    gpucnn_model,
    synced_median_ms,
    synthetic_data,
    torch_model,
)
from benchmarks.gpu_parts.steps import (
    _cell,
)
from benchmarks.torch_seed import TorchTraining


class _Counting:
    """A Numba kernel whose launches bump a counter."""

    def __init__(self, kernel: Any, launches: dict[str, int]) -> None:
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, cfg: Any) -> Any:
        self.launches["n"] += 1
        return self.kernel[cfg]


def count_numba_launches() -> dict[str, int]:
    """Wrap every gpucnn CUDA kernel so that each launch bumps the returned counter
    (uncount_numba_launches puts the kernels back)."""
    from gpucnn.backend import cuda as gpu

    launches = {"n": 0}
    for module in gpu.KERNEL_MODULES:
        for name in dir(module):
            if name.endswith("_kernel"):
                setattr(module, name, _Counting(getattr(module, name), launches))
    return launches


def uncount_numba_launches() -> None:
    from gpucnn.backend import cuda as gpu

    for module in gpu.KERNEL_MODULES:
        for name in dir(module):
            if name.endswith("_kernel"):
                kernel = getattr(module, name)
                while isinstance(kernel, _Counting):
                    kernel = kernel.kernel
                setattr(module, name, kernel)


def device_kernels_per_call(fn) -> str:
    """How many CUDA kernels ``fn`` puts on the device, counted by CUPTI (torch.profiler sees
    every kernel of the process, whichever library launched it)."""
    fn()
    try:
        kernels, _ = kernel_bench.cupti_segments([("call", fn)])["call"]
    except Exception as exc:  # no CUPTI on this machine: say so, do not fail the check
        return f"n/a ({type(exc).__name__})"
    return f"{kernels:.0f}"


def launches(
    lines: list[str],
    results: dict[str, Any],
    sizes: StepSizes = StepSizes(),  # noqa: B008
    batch: int = 64,
) -> None:
    """Part (d): Numba launches of one eager gpucnn step, and CUPTI's count of everything
    one step puts on the device, gpucnn eager and PyTorch eager (graphs: from part (s))."""
    from gpucnn import data, nn, optim
    from gpucnn.backend import get_backend

    backend = get_backend("cuda")
    backend.prepare()
    model = gpucnn_model(sizes).to(backend)
    crit = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), 1e-3, weight_decay=1e-5, amsgrad=True)
    images, labels = synthetic_data(batch, sizes)
    loader = data.DataLoader(images, labels, batch, mean=MNIST_MEAN, std=MNIST_STD, device=backend)
    xb, yb = next(iter(loader))

    def ours_step():
        model.zero_grad()
        crit(model(xb), yb)
        model.backward(crit.backward())
        opt.step()

    ours_step()  # compiled, optimizer state made
    counter = count_numba_launches()
    try:
        ours_step()
    finally:
        uncount_numba_launches()
    torch_run = TorchTraining(torch_model(sizes), images, labels, batch, sizes.torch_device)
    device = {
        "gpucnn": device_kernels_per_call(ours_step),
        "PyTorch": device_kernels_per_call(torch_run.epoch),  # one batch: one step
    }
    steps = results.get("steps", {})
    graphs = [
        f"{name} {_cell(steps[(name, batch)].kernels, 0)}"
        for name in ("gpucnn graph", "PyTorch graph")
        if (name, batch) in steps
    ]
    lines += [
        f"## (d) launches per training step (batch {batch}, Adam AMSGrad)",
        "",
        f"- gpucnn Numba kernel launches, eager step: {counter['n']} (a graph step: one graph "
        "launch)",
        f"- every CUDA kernel on the device (CUPTI, via torch.profiler; CuPy elementwise and "
        f"reductions and cuBLAS included), eager step: gpucnn {device['gpucnn']}, "
        f"PyTorch {device['PyTorch']}",
    ]
    if graphs:
        lines.append(
            "- the same per graph step (part (s), the epoch's bookkeeping included): "
            + ", ".join(graphs)
        )
    lines.append("")


def kernel_table(
    lines: list[str],
    out_dir: Path | None,
    batches: tuple[int, ...] = (64, 512),
    repeat: int = 20,
    budget: Budget = UNLIMITED,
    shapes: Any = None,
    torch_device: str = "cuda",
) -> None:
    """Part (k): benchmarks/kernels.py's GPU table, here and in out_dir/kernels-cuda.md."""
    rows = kernel_bench.cuda_rows(
        batches,
        repeat,
        shapes=shapes or kernel_bench.SeedShapes(),
        torch_device=torch_device,
        time_left=budget.left,
        echo=False,
    )
    lines += [
        f"## (k) {PART_TITLES['k']}: gpucnn vs PyTorch/cuDNN, GEMM kernel vs cuBLAS",
        "",
        "GPU us: the kernels (and copies) one call puts on the device, from CUPTI; event us: "
        f"CUDA events around {repeat} calls in a row, per call (the host's launch gaps "
        "included); gpucnn / ref on GPU us (event us without CUPTI); < 1: gpucnn is faster. "
        "Also in kernels-cuda.md (`python benchmarks/kernels.py --device cuda`).",
        "",
        *rows,
        "",
    ]
    if out_dir is not None:
        text = "\n".join(["# GPU kernels: gpucnn vs PyTorch/cuDNN and cuBLAS", "", *rows])
        (out_dir / "kernels-cuda.md").write_text(text + "\n")


def kernel_timings(lines: list[str]) -> None:
    import cupy
    import torch

    from gpucnn import functional as F

    sync = cupy.cuda.Device().synchronize
    lines += [
        "## (b) kernels, forward + backward, median ms",
        "",
        "| op | gpucnn | PyTorch cuDNN | gpucnn / cuDNN |",
        "|---|---:|---:|---:|",
    ]
    g = np.random.default_rng(0)
    cases = [("conv" if sh[4] == 3 else "pool", sh) for sh in SEED_WINDOW_SHAPES]
    for kind, (n, c, h, w, k, s, p) in cases + [("pool", sh) for sh in POOL_TIMING_SHAPES]:
        x = cupy.asarray(g.standard_normal((n, c, h, w)).astype(np.float32))
        xt = torch.as_tensor(x, device="cuda").requires_grad_(True)
        if kind == "conv":
            f = 32 if c == 1 else 64
            wt = cupy.asarray(g.standard_normal((f, c, k, k)).astype(np.float32))
            b = cupy.zeros(f, np.float32)

            def ours():
                y, cache = F.conv2d_forward(x, wt, b, s, p)
                F.conv2d_backward(cupy.ones_like(y), cache)

            wtt = torch.as_tensor(wt, device="cuda").requires_grad_(True)
            bt = torch.zeros(f, device="cuda", requires_grad=True)

            def ref():
                y = torch.nn.functional.conv2d(xt, wtt, bt, s, p)
                y.backward(torch.ones_like(y))

            name = f"conv {c}->{f} on {h}x{w}"
        else:

            def ours():
                y, cache = F.maxpool2d_forward(x, k, s, p)
                F.maxpool2d_backward(cupy.ones_like(y), cache)

            def ref():
                y = torch.nn.functional.max_pool2d(xt, k, s, p)
                y.backward(torch.ones_like(y))

            name = f"maxpool {k}x{k}" + (f"/{s} pad {p}" if (s, p) != (k, 0) else "")
            name += f" on {c}x{h}x{w}"
        t_ours = synced_median_ms(ours, sync)
        t_ref = synced_median_ms(ref, torch.cuda.synchronize)
        lines.append(f"| {name} (batch {n}) | {t_ours:.3f} | {t_ref:.3f} | {t_ours / t_ref:.2f} |")
    lines.append("")
