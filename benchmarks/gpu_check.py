"""One prepared GPU check: correctness, kernel timings and an epoch, gpucnn vs PyTorch/cuDNN.

    PYTHONPATH=. python benchmarks/gpu_check.py --data-dir .device-data [--out DIR]

Needs numba (numba-cuda), cupy, torch and numpy only; no network, no prefect. Meant to finish
in a few minutes on an H100:
  (a) CUDA vs CPU agreement: every window kernel at the seed model's real shapes, then the
      seed model's loss and every parameter gradient for one batch of 64;
  (b) per-kernel medians (synchronised, warmed up) of conv and pool forward+backward, gpucnn
      vs torch.nn.functional with cuDNN;
  (c) one epoch of the seed model (batch 64, MNIST resident on the GPU) for both, and the
      training time until 99% test accuracy;
  (d) kernel launches per training step: gpucnn's Numba launches, and every kernel on the
      device for gpucnn and for PyTorch (CUPTI through torch.profiler).
Before (a), the simulator's kernel tests (tests/backend/sim) run once more on the real GPU
with CuPy arrays, when pytest is installed.
Prints a markdown report and writes it to --out/gpu-check.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.torch_seed import torch_seed_cnn  # noqa: E402

SEED_WINDOW_SHAPES = [  # (N, C, H, W, k, stride, pad): the seed model's convs and pools
    (64, 1, 28, 28, 3, 1, 1),
    (64, 32, 14, 14, 3, 1, 1),
    (64, 32, 28, 28, 2, 2, 0),
    (64, 64, 14, 14, 2, 2, 0),
]

POOL_TIMING_SHAPES = [  # part (b) only: the seed model's pools at batch 512, overlapping windows
    (512, 32, 28, 28, 2, 2, 0),
    (512, 64, 14, 14, 2, 2, 0),
    (64, 64, 56, 56, 3, 2, 1),  # ResNet's stem pool: max-pool backward with atomic adds
]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The shapes part (a) checks at: the seed model's, by default. tests/backend/sim runs the
    same code at tiny sizes in the CUDA simulator, so the script's glue is tested before it
    meets a GPU."""

    windows: tuple = tuple(SEED_WINDOW_SHAPES)
    activations: tuple = (64, 32, 28, 28)  # after the first conv
    logits: tuple = (64, 10)
    fc_weight: tuple = (3136, 128)
    image: tuple = (1, 28, 28)
    batch: int = 64
    model: Callable[[], object] | None = None  # default: models.build("seed", seed=0)


def synced_median_ms(fn, sync, repeat=30, warmup=5) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def check_agreement(lines: list[str], sizes: Sizes = Sizes()) -> bool:  # noqa: B008
    import cupy

    from gpucnn import models, nn
    from gpucnn.backend import cpu
    from gpucnn.backend import cuda as gpu

    ok_all = True
    lines += ["## (a) CUDA vs CPU agreement", "", "| check | max abs diff | ok |", "|---|---:|---|"]
    g = np.random.default_rng(0)
    for n, c, h, w, k, s, p in sizes.windows:
        x = g.standard_normal((n, c, h, w)).astype(np.float32)
        xd = cupy.asarray(x)
        checks = {}
        cols = gpu.im2col(xd, k, s, p)
        checks["im2col"] = float(abs(cupy.asnumpy(cols) - cpu.im2col(x, k, s, p)).max())
        dc = g.standard_normal(cols.shape).astype(np.float32)
        checks["col2im"] = float(
            abs(
                cupy.asnumpy(gpu.col2im(cupy.asarray(dc), x.shape, k, s, p))
                - cpu.col2im(dc, x.shape, k, s, p)
            ).max()
        )
        if 2 * p <= k:
            y, arg = gpu.maxpool2d_fwd(xd, k, s, p)
            yr, argr = cpu.maxpool2d_fwd(x, k, s, p)
            checks["maxpool fwd"] = float(abs(cupy.asnumpy(y) - yr).max())
            dy = g.standard_normal(yr.shape).astype(np.float32)
            checks["maxpool bwd"] = float(
                abs(
                    cupy.asnumpy(gpu.maxpool2d_bwd(cupy.asarray(dy), arg, x.shape, k, s, p))
                    - cpu.maxpool2d_bwd(dy, argr, x.shape, k, s, p)
                ).max()
            )
        for name, diff in checks.items():
            ok = diff < 1e-3
            ok_all &= ok
            lines.append(f"| {name} {(n, c, h, w)} k{k} s{s} p{p} | {diff:.2e} | {ok} |")
    dev, host = cupy.asarray, cupy.asnumpy
    a = g.standard_normal(sizes.activations).astype(np.float32)
    checks = {
        f"relu {sizes.activations}": abs(host(gpu.relu_fwd(dev(a))) - cpu.relu_fwd(a)).max(),
        f"dropout p=0.5 mask {sizes.activations}": abs(
            host(gpu.dropout_fwd(dev(a), 0.5, 12345)) - cpu.dropout_fwd(a, 0.5, 12345)
        ).max(),
    }
    rows, classes = sizes.logits
    z, labels = g.standard_normal(sizes.logits).astype(np.float32), g.integers(0, classes, rows)
    (lg, gg), (lc, gc) = gpu.softmax_xent_fwd(dev(z), dev(labels)), cpu.softmax_xent_fwd(z, labels)
    checks[f"softmax cross-entropy loss {sizes.logits}"] = abs(float(lg) - float(lc))
    checks[f"softmax cross-entropy grad {sizes.logits}"] = abs(host(gg) - gc).max()
    ones, zeros = np.ones(a.shape[1], np.float32), np.zeros(a.shape[1], np.float32)
    yg, saved_g = gpu.batchnorm2d_fwd(
        dev(a), dev(ones), dev(zeros), dev(zeros), dev(ones), True, 0.1, 1e-5
    )
    yc, saved_c = cpu.batchnorm2d_fwd(a, ones, zeros, zeros.copy(), ones.copy(), True, 0.1, 1e-5)
    checks[f"batchnorm fwd {sizes.activations}"] = abs(host(yg) - yc).max()
    dxg = gpu.batchnorm2d_bwd(dev(a), saved_g, dev(ones), True)[0]
    checks[f"batchnorm bwd {sizes.activations}"] = abs(
        host(dxg) - cpu.batchnorm2d_bwd(a, saved_c, ones, True)[0]
    ).max()
    w, grad = (
        g.standard_normal(sizes.fc_weight).astype(np.float32),
        g.standard_normal(sizes.fc_weight).astype(np.float32),
    )
    state = [np.zeros_like(w) for _ in range(3)]
    kw = dict(
        step_size=1e-3, beta1=0.9, beta2=0.999, bias_correction2=1e-3, eps=1e-8, weight_decay=1e-5
    )
    wd, sd = dev(w), [dev(t) for t in state]
    gpu.adam_update(wd, dev(grad), *sd, **kw)
    cpu.adam_update(w, grad, *state, **kw)
    checks[f"adam amsgrad step {sizes.fc_weight}"] = abs(host(wd) - w).max()
    for name, diff in checks.items():
        ok = float(diff) < 1e-3
        ok_all &= ok
        lines.append(f"| {name} | {float(diff):.2e} | {ok} |")
    build = sizes.model or (lambda: models.build("seed", seed=0))
    cpu_model, gpu_model = build(), build().to("cuda")
    x = g.standard_normal((sizes.batch, *sizes.image)).astype(np.float32)
    y = g.integers(0, classes, sizes.batch)
    losses = []
    for model, xx, yy in ((cpu_model, x, y), (gpu_model, cupy.asarray(x), cupy.asarray(y))):
        crit = nn.CrossEntropyLoss()
        losses.append(float(crit(model(xx), yy)))
        model.backward(crit.backward())
    diff = abs(losses[0] - losses[1])
    lines.append(f"| model loss, batch {sizes.batch} | {diff:.2e} | {diff < 1e-4} |")
    ok_all &= diff < 1e-4
    for (name, pc), pg in zip(cpu_model.named_parameters(), gpu_model.parameters(), strict=True):
        d = float(abs(pc.grad - cupy.asnumpy(pg.grad)).max() / (abs(pc.grad).max() + 1e-12))
        lines.append(f"| grad {name} (relative) | {d:.2e} | {d < 1e-3} |")
        ok_all &= d < 1e-3
    lines.append("")
    return ok_all


def kernel_tests_on_gpu(lines: list[str]) -> bool:
    """tests/backend/sim once more, on the real GPU with CuPy arrays (no simulator)."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/backend/sim"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except Exception as exc:  # no pytest, a hang: report it, the other parts still run
        lines += ["## (t) kernel tests on the GPU", "", f"not run: {exc}", ""]
        return False
    tail = (out.stdout.strip().splitlines() or ["(no output)"])[-1]
    lines += [
        "## (t) kernel tests on the GPU",
        "",
        f"`pytest tests/backend/sim` with CuPy arrays, no simulator: {tail}",
        "",
    ]
    if out.returncode != 0:
        lines += ["```", out.stdout[-3000:], out.stderr[-1000:], "```", ""]
    return out.returncode == 0


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


def count_numba_launches() -> dict[str, int]:
    """Wrap every gpucnn CUDA kernel so that each launch bumps the returned counter."""
    from gpucnn.backend import cuda as gpu

    launches = {"n": 0}

    class Counting:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, cfg):
            launches["n"] += 1
            return self.kernel[cfg]

    for module in gpu.KERNEL_MODULES:
        for name in dir(module):
            if name.endswith("_kernel"):
                setattr(module, name, Counting(getattr(module, name)))
    return launches


def device_kernels_per_call(fn) -> str:
    """How many CUDA kernels ``fn`` puts on the device, counted by CUPTI (torch.profiler sees
    every kernel of the process, whichever library launched it)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
    except Exception as exc:  # no CUPTI on this machine: say so, do not fail the check
        return f"n/a ({type(exc).__name__})"
    return str(sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA"))


def epochs(lines: list[str], data_dir: str, max_epochs: int) -> None:
    import cupy
    import torch

    from gpucnn import data, models, nn, optim

    x, y = data.load("mnist", "train", root=data_dir, download=False)
    xt, yt = data.load("mnist", "test", root=data_dir, download=False)
    mean, std = 0.1307, 0.3081
    train = data.DataLoader(x, y, 64, seed=0, mean=mean, std=std, device="cuda")
    test = data.DataLoader(xt, yt, 1000, shuffle=False, mean=mean, std=std, device="cuda")

    launches = count_numba_launches()

    model = models.build("seed", seed=0).to("cuda")
    crit = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), 1e-3, weight_decay=1e-5, amsgrad=True)
    sync = cupy.cuda.Device().synchronize

    def ours_epoch():
        model.train()
        for xb, yb in train:
            model.zero_grad()
            crit(model(xb), yb)
            model.backward(crit.backward())
            opt.step()

    def ours_acc():
        model.eval()
        correct = sum(int((model(xb).argmax(axis=1) == yb).sum()) for xb, yb in test)
        return correct / len(yt)

    tm = torch_seed_cnn().cuda()
    topt = torch.optim.Adam(tm.parameters(), 1e-3, weight_decay=1e-5, amsgrad=True)
    tcrit = torch.nn.CrossEntropyLoss()
    gx = torch.as_tensor(((x.astype(np.float32) / 255 - mean) / std)[:, None], device="cuda")
    gy = torch.as_tensor(y, device="cuda")
    tx = torch.as_tensor(((xt.astype(np.float32) / 255 - mean) / std)[:, None], device="cuda")
    ty = torch.as_tensor(yt, device="cuda")

    def torch_epoch():
        tm.train()
        perm = torch.randperm(len(gy), device="cuda")
        for i in range(0, len(gy), 64):
            idx = perm[i : i + 64]
            topt.zero_grad()
            tcrit(tm(gx[idx]), gy[idx]).backward()
            topt.step()

    def torch_acc():
        tm.eval()
        with torch.no_grad():
            return float((tm(tx).argmax(1) == ty).float().mean())

    rows = []
    for name, epoch, acc, s in (
        ("gpucnn", ours_epoch, ours_acc, sync),
        ("PyTorch eager + cuDNN", torch_epoch, torch_acc, torch.cuda.synchronize),
    ):
        first, total, reached, acc_v = None, 0.0, None, 0.0
        for e in range(max_epochs):
            s()
            t0 = time.perf_counter()
            epoch()
            s()
            dt = time.perf_counter() - t0
            first = dt if first is None else first
            total += dt
            acc_v = acc()
            if acc_v >= 0.99 and reached is None:
                reached = (total, e + 1)
                break
        rows.append((name, first, reached, acc_v))
        if name == "gpucnn":
            launches["n"] = 0
            xb, yb = next(iter(train))

            def ours_step():
                model.zero_grad()
                crit(model(xb), yb)
                model.backward(crit.backward())
                opt.step()

            ours_step()
            per_step = launches["n"]
            device_kernels = {"gpucnn": device_kernels_per_call(ours_step)}
    xb, yb = gx[:64], gy[:64]

    def torch_step():
        topt.zero_grad()
        tcrit(tm(xb), yb).backward()
        topt.step()

    device_kernels["PyTorch"] = device_kernels_per_call(torch_step)
    lines += [
        "## (c) seed model on MNIST, batch 64, data resident on the GPU",
        "",
        "| | first epoch s | training s to 99% test acc (epochs) | last test acc |",
        "|---|---:|---:|---:|",
    ]
    for name, first, reached, acc_v in rows:
        r = f"{reached[0]:.2f} ({reached[1]})" if reached else f"not within {max_epochs}"
        lines.append(f"| {name} | {first:.2f} | {r} | {acc_v:.4f} |")
    lines += [
        "",
        f"epoch time gpucnn / PyTorch: **{rows[0][1] / rows[1][1]:.2f}**",
        "",
        "## (d) launches per training step (batch 64, Adam amsgrad)",
        "",
        f"- gpucnn Numba kernel launches: {per_step}",
        f"- every CUDA kernel on the device (CUPTI, via torch.profiler; CuPy elementwise and "
        f"reductions and cuBLAS included): gpucnn {device_kernels['gpucnn']}, "
        f"PyTorch {device_kernels['PyTorch']}",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--data-dir",
        default=".device-data",
        help="a gpucnn data folder holding mnist/ (verified IDX files)",
    )
    ap.add_argument("--out", default=".", help="folder for gpu-check.md")
    ap.add_argument("--max-epochs", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: t,a,b,c")
    args = ap.parse_args()
    import cupy
    import numba
    import torch

    props = cupy.cuda.runtime.getDeviceProperties(0)
    lines = [
        "# GPU check: gpucnn CUDA backend vs CPU and vs PyTorch/cuDNN",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
        f"- device: {props['name'].decode()}, cupy {cupy.__version__}, numba {numba.__version__}, "
        f"torch {torch.__version__} (cuDNN {torch.backends.cudnn.version()})",
        f"- command: `PYTHONPATH=. python {' '.join(sys.argv)}`",
        "",
    ]
    skip = set(args.skip.split(","))
    ok = True
    for part, fn in (
        ("t", lambda: kernel_tests_on_gpu(lines)),
        ("a", lambda: check_agreement(lines)),
        ("b", lambda: kernel_timings(lines)),
        ("c", lambda: epochs(lines, args.data_dir, args.max_epochs)),
    ):
        if part in skip:
            continue
        try:
            result = fn()
            ok &= result is not False
        except Exception as exc:  # report and go on: every part's evidence counts
            ok = False
            lines += [f"## part ({part}) failed", "", f"```\n{type(exc).__name__}: {exc}\n```", ""]
        print("\n".join(lines), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu-check.md").write_text("\n".join(lines) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
