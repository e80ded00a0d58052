"""Where a training step's time goes: each layer's forward and backward, the loss and Adam,
for the seed model on the CPU (medians over the timed steps).

    python benchmarks/profile_step.py [--batch 64] [--blas-threads 2] [--steps 60]

Layers run in the order Sequential runs them (a ReLU after the max pool that follows it).
``--batch 32 --blas-threads 1`` profiles what one of two shards does in a sharded step
(gpucnn.train.parallel).
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
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    from benchmarks.machine import describe
    from gpucnn import models, nn, optim
    from gpucnn.backend import CPU

    CPU.prepare()  # as the Trainer does on the CPU
    threadpool_limits(args.blas_threads, user_api="blas")
    g = np.random.default_rng(0)
    x = g.standard_normal((args.batch, 1, 28, 28)).astype(np.float32)
    y = g.integers(0, 10, args.batch)
    model = models.build("seed", seed=0)
    crit = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), 1e-3, weight_decay=1e-5, amsgrad=True)
    order = [m for _, m in model.run_order()]
    times: dict[str, list[float]] = {}

    def timed(name, fn, *a):
        t0 = time.perf_counter()
        out = fn(*a)
        times.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    for _ in range(10 + args.steps):
        model.zero_grad()
        h = x
        for i, layer in enumerate(order):
            h = timed(f"forward  {i} {type(layer).__name__}", layer, h)
        timed("loss", crit, h, y)
        d = timed("loss backward", crit.backward)
        for i, layer in reversed(list(enumerate(order))):
            d = timed(f"backward {i} {type(layer).__name__}", layer.backward, d)
        timed("adam step", opt.step)
    med = {k: 1e3 * statistics.median(v[10:]) for k, v in times.items()}
    total = sum(med.values())
    print(f"# One training step of the seed model, batch {args.batch}, BLAS threads "
          f"{args.blas_threads}\n\n{describe()}\n")  # fmt: skip
    print("| part | ms | share |\n|---|---:|---:|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {v / total:.0%} |")
    print(f"| **total** | **{total:.2f}** | |")


if __name__ == "__main__":
    main()
