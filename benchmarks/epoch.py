"""Training throughput of the seed model: gpucnn vs PyTorch, same batches, same threads.

    python benchmarks/epoch.py [--steps 100] [--blocks 3] [--threads 2] [--device cpu]

Each framework trains in its own process (so peak memory is its own), on the same random
batch 64 of MNIST-shaped float32 data with Adam (amsgrad, weight decay). The two alternate in
blocks (gpucnn, torch, gpucnn, torch, ...) so that drift of the machine hits both; each block
warms up first. Prints images/s per block, the median ratio, and each one's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.torch_seed import torch_seed_cnn  # noqa: E402


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(framework: str, steps: int, warmup: int, batch: int, device: str, threads: int) -> dict:
    import numpy as np

    g = np.random.default_rng(0)
    x = g.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = g.integers(0, 10, batch)
    base_rss = peak_rss_mb()
    if framework.startswith("gpucnn"):
        from gpucnn import models, nn, optim
        from gpucnn.backend import get_backend
        from gpucnn.train.parallel import DataParallel

        backend = get_backend(device)
        backend.prepare()  # as the Trainer does (on the CPU: keep freed memory for reuse)

        model = models.build("seed", seed=0).to(backend)
        crit = nn.CrossEntropyLoss()
        opt = optim.Adam(model.parameters(), 1e-3, weight_decay=1e-5, amsgrad=True)
        if device == "cuda":  # pragma: no cover - needs the CUDA backend
            x, y = backend.asarray(x), backend.asarray(y)
        # "gpucnn" steps as the Trainer does by default: on batch shards, one per thread
        shards = threads if framework == "gpucnn" and device == "cpu" else 1
        dp = DataParallel(model, crit, shards) if shards > 1 else None

        def step():
            model.zero_grad()
            if dp is not None:
                dp.step(x, y)
            else:
                crit(model(x), y)
                model.backward(crit.backward())
            opt.step()

        def sync():
            pass
    else:
        import torch

        dev = torch.device(device)
        model = torch_seed_cnn().to(dev)
        opt = torch.optim.Adam(model.parameters(), 1e-3, weight_decay=1e-5, amsgrad=True)
        crit = torch.nn.CrossEntropyLoss()
        xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)

        def step():
            opt.zero_grad()
            crit(model(xt), yt).backward()
            opt.step()

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = time.perf_counter() - t0
    return {
        "framework": framework,
        "images_per_s": steps * batch / dt,
        "peak_rss_mb": peak_rss_mb(),
        "base_rss_mb": base_rss,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=100, help="timed steps per block")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--blocks", type=int, default=3, help="alternating blocks per framework")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        if args.worker.startswith("torch"):
            import torch

            torch.set_num_threads(args.threads)
        result = worker(args.worker, args.steps, args.warmup, args.batch, args.device, args.threads)
        print(json.dumps(result))
        return

    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "OPENBLAS_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "NUMBA_NUM_THREADS": str(args.threads),
        "PYTHONPATH": str(ROOT),
    }
    frameworks = ["gpucnn", "gpucnn-serial", "torch", "torch-malloc"]
    if args.threads < 2:
        frameworks.remove("gpucnn-serial")
    # torch-malloc: PyTorch with the same glibc malloc settings gpucnn makes for itself
    # (gpucnn.backend.cpu.memory), to show what they are worth to it
    malloc_env = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
    results: dict[str, list[dict]] = {fw: [] for fw in frameworks}
    for block in range(args.blocks):
        for fw in frameworks:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    fw,
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                    "--batch",
                    str(args.batch),
                    "--threads",
                    str(args.threads),
                    "--device",
                    args.device,
                ],
                env={**env, **malloc_env} if fw == "torch-malloc" else env,
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[fw].append(r)
            print(
                f"block {block + 1}: {fw:13s} {r['images_per_s']:8.0f} img/s  "
                f"peak RSS {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    med = {fw: statistics.median(r["images_per_s"] for r in rs) for fw, rs in results.items()}
    rss = {fw: max(r["peak_rss_mb"] for r in rs) for fw, rs in results.items()}
    work = {fw: max(r["peak_rss_mb"] - r["base_rss_mb"] for r in rs) for fw, rs in results.items()}
    from benchmarks.machine import describe

    def ratio(ours: str, theirs: str) -> float:
        return statistics.median(
            a["images_per_s"] / b["images_per_s"]
            for a, b in zip(results[ours], results[theirs], strict=True)
        )

    per_block = {
        fw: ", ".join(str(round(r["images_per_s"])) for r in rs) for fw, rs in results.items()
    }

    table = "\n".join(
        [
            f"# Seed-model training throughput, {args.device}, batch {args.batch}, "
            f"{args.threads} threads",
            "",
            describe(),
            "",
            "| | images/s (median) | per block | peak RSS MB | RSS growth after imports MB |",
            "|---|---:|---|---:|---:|",
            *(
                f"| {fw} | {med[fw]:.0f} | {per_block[fw]} | {rss[fw]:.0f} | {work[fw]:.0f} |"
                for fw in results
            ),
            "",
            "Ratios are medians over the blocks of each block's ratio (the runs of a block "
            "follow each other, so they share the machine's state); torch-malloc is PyTorch "
            "run with the glibc malloc settings gpucnn makes for itself "
            "(MALLOC_MMAP_THRESHOLD_=32 MiB, MALLOC_TRIM_THRESHOLD_=1 GiB).",
            "",
            "| gpucnn | against PyTorch | against torch-malloc |",
            "|---|---:|---:|",
            *(
                f"| {label} | **{ratio(fw, 'torch'):.2f}x** | "
                f"**{ratio(fw, 'torch-malloc'):.2f}x** |"
                for fw, label in (
                    ("gpucnn", "Trainer step (batch shards, one per thread)"),
                    ("gpucnn-serial", "plain loop: model(x), crit.backward(), opt.step()"),
                )
                if fw in med
            ),
            "",
            "gpucnn steps on batch shards, one per thread (gpucnn.train.parallel, what the "
            "Trainer does on the CPU by default); gpucnn-serial is one step on the whole batch "
            "as the README's API tour writes it, BLAS and the CPU kernels on every thread.",
        ]
    )
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
