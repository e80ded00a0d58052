"""Per-op timings on the CPU: gpucnn vs a naive NumPy loop vs PyTorch, side by side.

    python benchmarks/kernels.py [--repeat 20] [--threads 2] [--out FILE]

Forward + backward of conv, max-pool and linear at the seed model's shapes (batch 64) and a
couple of larger ones. Each is warmed up, then timed ``--repeat`` times; the table shows
medians in milliseconds and the ratios. The naive loop visits output pixels one at a time
with NumPy doing the per-pixel work (the textbook formula, vectorised over batch and channels
only), to show what im2col + GEMM buys.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from gpucnn.backend import CPU

    # as the Trainer does; both libraries run in this one process, so both get it
    CPU.prepare()
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    from benchmarks.machine import describe

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
    text = "\n".join(
        [
            f"# CPU kernels, {args.threads} threads",
            "",
            describe(),
            "",
            "Medians in ms; gpucnn / PyTorch < 1 means gpucnn is faster.",
            "",
            *rows,
        ]
    )
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
