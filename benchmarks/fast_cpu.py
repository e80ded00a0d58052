"""The fast recipe on the CPU, gpucnn against PyTorch: time to 99% test accuracy, 5 seeds each.

    python benchmarks/fast_cpu.py [--seeds 5] [--threads 2] [--data-dir DIR] [--out FILE]

For each seed, gpucnn trains TrainConfig.preset("fast") through its recipe (the Trainer with
its callbacks, validation and checkpoints; batch shards on the cores) and PyTorch trains the
same recipe (benchmarks/gpu_parts/epochs.fast_runs: the seed CNN from the same initial
weights, Adam AMSGrad, OneCycleLR over the 2 epochs, batch 256, the same training split),
taking turns (which goes first alternates by seed). Both run in this one process with the same
threads (``--threads``: gpucnn.set_num_threads and torch.set_num_threads) and the same glibc
malloc settings (the ones gpucnn's Trainer makes for the process). Reported per seed: the test
accuracy after each epoch and the training seconds (training passes only, for both: no
validation, checkpoints or test evaluation), then the mean accuracy, the mean time to reach
99% and the ratio of the two libraries' times.

Needs real MNIST: --data-dir DIR with DIR/mnist/ (or GPUCNN_DATA_DIR); it never downloads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import describe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--data-dir", default=os.environ.get("GPUCNN_DATA_DIR"))
    ap.add_argument("--out", type=Path, default=None, help="write the report here too")
    args = ap.parse_args()
    import torch

    import gpucnn
    from benchmarks.gpu_parts.common import StepSizes, load_mnist
    from benchmarks.gpu_parts.epochs import fast_runs
    from gpucnn.train.config import TrainConfig

    if args.data_dir is None:
        raise SystemExit("--data-dir DIR (holding DIR/mnist/) or GPUCNN_DATA_DIR is needed")
    torch.set_num_threads(args.threads)
    gpucnn.set_num_threads(args.threads)
    data = load_mnist(args.data_dir)
    sizes = StepSizes(torch_device="cpu")
    rows, results = [], {"gpucnn": [], "PyTorch": []}
    for seed in range(args.seeds):
        config = TrainConfig.preset("fast", device="cpu", seed=seed, data_dir=args.data_dir)
        ours, theirs, n_train = fast_runs(config, data, sizes)
        order = [("gpucnn", ours), ("PyTorch", theirs)]
        for name, run in order if seed % 2 == 0 else order[::-1]:
            r = run()
            results[name].append(r)
            reached = r.time_to(0.99)
            rows.append(
                f"| {seed} | {name} | {' / '.join(f'{a:.4f}' for a in r.accs)} | "
                f"{' + '.join(f'{t:.1f}' for t in r.times)} = {sum(r.times):.1f} | "
                f"{f'{reached[0]:.1f} ({reached[1]} ep)' if reached else 'not reached'} |"
            )
            print(rows[-1], flush=True)

    def summary(name: str) -> tuple[float, float, float | None]:
        runs = results[name]
        final = [r.accs[-1] for r in runs]
        reached = [r.time_to(0.99) for r in runs]
        to99 = statistics.mean(t for t, _ in reached) if all(reached) else None
        return statistics.mean(final), min(final), to99

    (ga, gmin, gt), (ta, tmin, tt) = summary("gpucnn"), summary("PyTorch")
    times = {n: statistics.mean(sum(r.times) for r in results[n]) for n in results}
    lines = [
        "# The fast recipe on the CPU: gpucnn against PyTorch",
        "",
        describe(),
        f"- recipe: TrainConfig.preset('fast'): seed model, batch {config.batch_size}, "
        f"{config.epochs} epochs, one cycle to lr {config.lr:g} (pct_start {config.pct_start}),"
        f" Adam AMSGrad, weight decay {config.weight_decay:g}; {n_train} training images",
        "",
        f"**gpucnn: mean test accuracy {ga:.4f} (min {gmin:.4f}), mean training time "
        f"{times['gpucnn']:.1f} s; PyTorch: {ta:.4f} (min {tmin:.4f}), {times['PyTorch']:.1f} s; "
        f"gpucnn's time is {times['gpucnn'] / times['PyTorch']:.2f}x PyTorch's.**",
        "",
        "Mean time to 99% test accuracy: "
        + (f"gpucnn {gt:.1f} s" if gt is not None else "gpucnn: not every seed reached it")
        + ", "
        + (f"PyTorch {tt:.1f} s" if tt is not None else "PyTorch: not every seed reached it")
        + (f" ({gt / tt:.2f}x)." if gt is not None and tt is not None else "."),
        "",
        "| seed | library | test accuracy after each epoch | training s | to 99% s |",
        "|---:|---|---|---:|---:|",
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
