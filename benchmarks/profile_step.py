"""Where a training step's time goes: each step's forward and backward, the loss and Adam,
for the seed model on the CPU (medians over the timed steps).

    python benchmarks/profile_step.py [--batch 64] [--blas-threads 2] [--steps 60]
                                      [--fuse both|on|off] [--conv both|im2col|winograd|auto]

Layers run in the steps Sequential runs (a ReLU after the max pool that follows it; with
fusion, Conv2d + MaxPool2d + ReLU as one ConvReLUPool step, named by its layers "0+2+1").
``--fuse both`` profiles the model with fusion off and on; ``--conv both`` (the default, with
fusion on) the second convolution by im2col + GEMM and by Winograd (the backend's
WINOGRAD_TILE); the variants' steps take turns in one process and the totals are compared.
``--blas-threads`` sizes BLAS and the CPU kernels' threads together
(gpucnn.set_num_threads). ``--batch 32 --blas-threads 1`` profiles what one of two shards
does in a sharded step (gpucnn.train.parallel).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--blas-threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60, help="timed steps (after 10 warm-up)")
    ap.add_argument("--fuse", choices=("both", "on", "off"), default="on")
    ap.add_argument("--conv", choices=("both", "im2col", "winograd", "auto"), default="both")
    args = ap.parse_args()
    import gpucnn
    from benchmarks.machine import describe
    from gpucnn import models, nn, optim
    from gpucnn.backend import CPU

    CPU.prepare()  # as the Trainer does on the CPU
    gpucnn.set_num_threads(args.blas_threads)
    g = np.random.default_rng(0)
    x = g.standard_normal((args.batch, 1, 28, 28)).astype(np.float32)
    y = g.integers(0, 10, args.batch)
    fuses = {"both": ("off", "on"), "on": ("on",), "off": ("off",)}[args.fuse]
    convs = ("im2col", "winograd") if args.conv == "both" else (args.conv,)
    runs = {}
    for fuse in fuses:
        for conv in convs:
            model = models.build("seed", seed=0)
            model.fuse = fuse == "on"
            model[3].algorithm = conv
            crit = nn.CrossEntropyLoss()
            opt = optim.Adam(model.parameters(), 1e-3, weight_decay=1e-5, amsgrad=True)
            runs[f"fusion {fuse}, conv2 {model[3].algorithm_note()}"] = (model, crit, opt, {})

    def timed(times, name, fn, *a):
        t0 = time.perf_counter()
        out = fn(*a)
        times.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    for _ in range(10 + args.steps):
        for model, crit, opt, times in runs.values():  # the variants take turns
            model.zero_grad()
            steps = [("+".join(names), step) for names, step in model.run_steps()]
            h = x
            for name, step in steps:
                h = timed(times, f"forward  {name} {type(step).__name__}", step, h)
            timed(times, "loss", crit, h, y)
            d = timed(times, "loss backward", crit.backward)
            for name, step in reversed(steps):
                d = timed(times, f"backward {name} {type(step).__name__}", step.backward, d)
            timed(times, "adam step", opt.step)
    totals = {}
    for variant, (_, _, _, times) in runs.items():
        med = {k: 1e3 * statistics.median(v[10:]) for k, v in times.items()}
        total = totals[variant] = sum(med.values())
        print(f"# One training step of the seed model, batch {args.batch}, threads "
              f"{args.blas_threads}, {variant}\n\n{describe()}\n")  # fmt: skip
        print("| part | ms | share |\n|---|---:|---:|")
        for k, v in med.items():
            print(f"| {k} | {v:.2f} | {v / total:.0%} |")
        print(f"| **total** | **{total:.2f}** | |\n")
    if len(totals) == 2:
        (a, ta), (b, tb) = totals.items()
        print(
            f"{a}: {ta:.2f} ms; {b}: {tb:.2f} ms per step: {ta / tb:.2f}x "
            "(sums of per-part medians)"
        )


if __name__ == "__main__":
    main()
