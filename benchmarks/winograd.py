"""Which 3×3 stride-1 convolutions Winograd pays for on the CPU: im2col + GEMM against
F(2×2, 3×3) and F(4×4, 3×3), with PyTorch beside them, and the machine's sgemm as the floor.

    python benchmarks/winograd.py [--threads 1,2] [--batch 32] [--rounds 5] [--repeat 10]
                                  [--out FILE]

For each layer shape, forward + backward (dx, dw, db) of gpucnn.functional.conv2d with each
algorithm, and of the fused conv + ReLU + 2×2 max pool step where the seed model runs one,
taking turns in rounds in this one process (the median of the rounds' medians), at each
thread count (gpucnn.set_num_threads sizes BLAS and the kernels; torch.set_num_threads the
same for PyTorch). ``--batch 32`` at one thread is one shard of the Trainer's sharded step at
batch 64; two threads at batch 64 is a plain loop's whole batch. The shapes with few input
channels show where the setting WINOGRAD_MIN_CHANNELS comes from; the rows of the seed model's
second conv, which WINOGRAD_TILE is chosen by. The sgemm rows are the GFLOP/s OpenBLAS reaches
on a large square and on the GEMMs of the seed model's second conv.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import describe  # noqa: E402

# (label, C, F, H=W, fused): the seed model's second conv (fused, and as seed-bn runs it),
# a VGG-style pair, and thin layers
SHAPES = [
    ("seed conv2 + ReLU + pool", 32, 64, 14, True),
    ("seed-bn conv2 (no fusion)", 32, 64, 14, False),
    ("64→64, 28×28", 64, 64, 28, False),
    ("128→128, 14×14", 128, 128, 14, False),
    ("16→32, 28×28", 16, 32, 28, False),
    ("8→16, 28×28", 8, 16, 28, False),
    ("4→16, 28×28", 4, 16, 28, False),
    ("1→32, 28×28 (seed conv1)", 1, 32, 28, True),
]
ALGOS = [("im2col", 0), ("winograd", 2), ("winograd", 4)]


def median_ms(fn, repeat: int) -> float:
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def gpucnn_step(x, w, b, algo: str, m: int, fused: bool):
    from gpucnn import functional as F
    from gpucnn.backend import cpu

    def run():
        cpu.WINOGRAD_TILE = m or cpu.WINOGRAD_TILE
        if fused:
            y, cache = F.conv2d_relu_maxpool_forward(x, w, b, 1, 1, algorithm=algo)
            F.conv2d_relu_maxpool_backward(y, cache)
        else:
            y, cache = F.conv2d_forward(x, w, b, 1, 1, algorithm=algo)
            F.conv2d_backward(y, cache)

    return run


def torch_step(x, w, b, fused: bool):
    import torch

    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    tf = torch.nn.functional

    def run():
        tx.grad = tw.grad = tb.grad = None
        y = tf.conv2d(tx, tw, tb, padding=1)
        if fused:
            y = tf.relu(tf.max_pool2d(y, 2))
        y.backward(y.detach())

    return run


def sgemm_rows(repeat: int) -> list[str]:
    rows = []
    g = np.random.default_rng(0)
    cases = [
        ("1024×1024 @ 1024×1024", (1024, 1024), (1024, 1024), 1),
        ("im2col forward, batch 32: 64×288 @ 288×6272", (64, 288), (288, 6272), 1),
        ("F(2x2,3x3) forward, batch 32: 16 × (1568×32 @ 32×64)", (1568, 32), (32, 64), 16),
        ("F(4x4,3x3) forward, batch 32: 36 × (512×32 @ 32×64)", (512, 32), (32, 64), 36),
    ]
    for label, sa, sb, batch in cases:
        a = g.standard_normal((batch, *sa) if batch > 1 else sa).astype(np.float32)
        b = g.standard_normal((batch, *sb) if batch > 1 else sb).astype(np.float32)
        ms = median_ms(lambda a=a, b=b: a @ b, repeat)
        flop = 2 * batch * sa[0] * sa[1] * sb[1]
        rows.append(f"| {label} | {ms:.2f} | {flop / ms / 1e6:.0f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--batch", type=int, default=32, help="the batch at one thread (doubled at 2)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import torch

    import gpucnn
    from gpucnn.backend import CPU, cpu

    CPU.prepare()  # the Trainer's malloc settings, for both libraries in this process
    was = cpu.WINOGRAD_TILE
    lines = [
        "# Winograd against im2col on the CPU, per layer, with PyTorch beside them",
        "",
        describe(),
        "",
        "Forward + backward (dx, dw, db) in ms, median of the rounds' medians; the ratios are "
        "im2col's time over each algorithm's (> 1: faster than im2col) and PyTorch's time "
        "over gpucnn's best.",
        "",
    ]
    for nt in (int(t) for t in args.threads.split(",")):
        gpucnn.set_num_threads(nt)
        torch.set_num_threads(nt)
        batch = args.batch * nt
        lines += [
            f"## {nt} thread{'s' if nt > 1 else ''}, batch {batch}",
            "",
            "| layer | im2col | F(2x2,3x3) | F(4x4,3x3) | PyTorch | im2col / F(2,3) | "
            "im2col / F(4,3) | PyTorch / gpucnn best |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, c, f, hw, fused in SHAPES:
            g = np.random.default_rng(0)
            x = g.standard_normal((batch, c, hw, hw)).astype(np.float32)
            w = (g.standard_normal((f, c, 3, 3)) * 0.1).astype(np.float32)
            b = g.standard_normal(f).astype(np.float32)
            fns = {f"{a}{m}": gpucnn_step(x, w, b, a, m, fused) for a, m in ALGOS}
            fns["torch"] = torch_step(x, w, b, fused)
            rounds: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(args.rounds):
                for k, fn in fns.items():
                    rounds[k].append(median_ms(fn, args.repeat))
            ms = {k: statistics.median(v) for k, v in rounds.items()}
            best = min(ms["im2col0"], ms["winograd2"], ms["winograd4"])
            lines.append(
                f"| {label} | {ms['im2col0']:.2f} | {ms['winograd2']:.2f} | {ms['winograd4']:.2f} "
                f"| {ms['torch']:.2f} | {ms['im2col0'] / ms['winograd2']:.2f}x | "
                f"{ms['im2col0'] / ms['winograd4']:.2f}x | {ms['torch'] / best:.2f}x |"
            )
            print(lines[-1], flush=True)
        lines += ["", "| sgemm | ms | GFLOP/s |", "|---|---:|---:|", *sgemm_rows(args.repeat), ""]
        print("\n".join(lines[-7:]), flush=True)
    cpu.WINOGRAD_TILE = was
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
