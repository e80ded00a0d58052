"""The colour preset's epoch on the CPU: gpucnn vs PyTorch, the same network, same threads.

    python benchmarks/colour_cpu.py [--images 2560] [--blocks 3] [--threads 2] [--out FILE]

The network is the `cifar` preset's (gpucnn.train.config.PRESETS): the narrow ResNet (stem,
one BasicBlock per stage at widths 16, 32, 64, global average pooling, linear), on 32×32 RGB
uint8 images in batches of 128, trained with Adam (amsgrad, weight decay 1e-5), each batch
scaled, flipped and randomly cropped (padding 4) and normalised per channel inside the timed
loop. gpucnn trains through its Trainer and DataLoader (as the recipe does: batch shards on
the cores); PyTorch the same network with copied initial weights, the same augmentation in
torch ops and torch.set_num_threads(threads). Each framework runs in its own process,
alternating in blocks (gpucnn, torch, gpucnn, ...) after a warm-up epoch; an epoch of the
preset (45,000 training images: CIFAR-10's 50,000 less 10% for validation) is projected from
the measured images/s.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import machine  # noqa: E402

EPOCH_IMAGES = 45_000
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def images_and_labels(n: int):
    import numpy as np

    g = np.random.default_rng(0)
    return g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), g.integers(0, 10, n)


def torch_twin(model: Any) -> Any:
    """The narrow ResNet in PyTorch, layer for layer, with gpucnn's initial weights."""
    import torch

    from gpucnn import nn
    from gpucnn.backend import to_host

    tnn = torch.nn

    class Residual(tnn.Module):
        def __init__(self, body, shortcut):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    def convert(m: Any) -> Any:
        kind = type(m)
        if kind is nn.Sequential:
            return tnn.Sequential(*[convert(c) for c in m.children()])
        if kind is nn.Residual:
            return Residual(convert(m.body), None if m.shortcut is None else convert(m.shortcut))
        if kind is nn.Conv2d:
            return tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.pad,
                              bias=m.bias is not None)  # fmt: skip
        if kind is nn.BatchNorm2d:
            return tnn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum)
        if kind is nn.ReLU:
            return tnn.ReLU()
        if kind is nn.GlobalAvgPool2d:
            return tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Flatten())
        if kind is nn.Linear:
            return tnn.Linear(m.in_features, m.out_features)
        raise ValueError(f"no twin for {kind.__name__}")

    out = convert(model)
    ours = [p.data for _, p in model.named_parameters()]
    theirs = list(out.parameters())
    assert [tuple(a.shape) for a in ours] == [tuple(p.shape) for p in theirs]
    with torch.no_grad():
        for a, p in zip(ours, theirs, strict=True):
            p.copy_(torch.as_tensor(to_host(a)))
    return out


def worker(framework: str, n: int, threads: int) -> dict:

    from gpucnn import models

    x, y = images_and_labels(n)
    model = models.build("resnet", num_classes=10, in_channels=3, seed=0, input_size=32)
    if framework == "gpucnn":
        from gpucnn import data, nn, optim
        from gpucnn.train.trainer import Trainer

        loader = data.DataLoader(x, y, 128, seed=0, mean=MEAN, std=STD,
                                 augment=data.parse_recipe("crop-flip"))  # fmt: skip
        opt = optim.Adam(model.parameters(), 4e-3, weight_decay=1e-5, amsgrad=True)
        trainer = Trainer(model, nn.CrossEntropyLoss(), opt, device="cpu", progress=False)

        def epoch() -> None:
            trainer.fit(loader, None, trainer.epoch + 1)
    else:
        import torch

        torch.set_num_threads(threads)
        net = torch_twin(model)
        opt = torch.optim.Adam(net.parameters(), 4e-3, weight_decay=1e-5, amsgrad=True)
        crit = torch.nn.CrossEntropyLoss()
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        inv_std = 1 / torch.tensor(STD).view(1, 3, 1, 1)
        gen = torch.Generator().manual_seed(0)

        def epoch() -> None:
            net.train()
            order = torch.randperm(n, generator=gen)
            for i in range(0, n, 128):
                idx = order[i : i + 128]
                b = xt[idx].float() / 255
                flip = torch.rand(len(idx), generator=gen) < 0.5
                b = torch.where(flip.view(-1, 1, 1, 1), b.flip(3), b)
                padded = torch.nn.functional.pad(b, (4, 4, 4, 4))
                dx, dy = torch.randint(0, 9, (2, len(idx)), generator=gen)
                ar = torch.arange(32)
                rows = (dy[:, None] + ar)[:, None, :, None]
                cols = (dx[:, None] + ar)[:, None, None, :]
                k = torch.arange(len(idx))[:, None, None, None]
                b = padded[k, torch.arange(3)[None, :, None, None], rows, cols]
                b = (b - mean) * inv_std
                opt.zero_grad()
                crit(net(b), yt[idx]).backward()
                opt.step()

    epoch()  # warm-up: compiled kernels, allocator
    start = time.perf_counter()
    epoch()
    seconds = time.perf_counter() - start
    return {"framework": framework, "images_per_s": n / seconds, "seconds": seconds, "n": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=2560, help="images per timed epoch")
    ap.add_argument("--blocks", type=int, default=3, help="alternating blocks per framework")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=None, help="also write the markdown report here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.images, args.threads)))
        return
    env = {
        **os.environ,
        **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                           "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")},
        "PYTHONPATH": str(ROOT),
    }  # fmt: skip
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    results: dict[str, list[dict]] = {"gpucnn": [], "torch": []}
    for block in range(args.blocks):
        for fw in results:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", fw, "--images", str(args.images),
                 "--threads", str(args.threads)],
                capture_output=True, text=True, env=env, check=True,
            )  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[fw].append(r)
            print(f"block {block + 1} {fw}: {r['images_per_s']:.0f} images/s", flush=True)
    ips = {fw: statistics.median(r["images_per_s"] for r in rs) for fw, rs in results.items()}
    epoch = {fw: EPOCH_IMAGES / v for fw, v in ips.items()}
    lines = [
        "# The colour preset's epoch on the CPU: gpucnn vs PyTorch",
        "",
        machine.describe(),
        f"- load average before the run (1, 5, 15 min): {load}",
        "- network: the `cifar` preset's narrow ResNet (widths 16, 32, 64, one BasicBlock per "
        "stage), 32x32 RGB, batch 128, Adam (amsgrad), flip + random crop (padding 4) and "
        "per-channel normalisation inside the timed loop; same initial weights; "
        f"{args.threads} threads each",
        f"- an epoch of the preset: {EPOCH_IMAGES:,} training images, projected from the "
        "median images/s of the blocks",
        "",
        "| framework | images/s (median) | blocks | epoch of 45,000 images |",
        "|---|---:|---|---:|",
    ]
    for fw in results:
        blocks = ", ".join(f"{r['images_per_s']:.0f}" for r in results[fw])
        lines.append(f"| {fw} | {ips[fw]:.0f} | {blocks} | {epoch[fw]:.0f} s |")
    lines += ["", f"gpucnn / PyTorch epoch time: {epoch['gpucnn'] / epoch['torch']:.2f}x"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
