"""Training from a cache larger than the memory it is given: peak RSS of an epoch over a
memory-mapped uint8 cache of 2 GB or more.

    python benchmarks/cache_memory.py [--images 700000] [--out FILE]

A cache of ``--images`` 32x32 RGB images (3,072 bytes each: 700,000 make 2.15 GB) is written
with the writer an image folder's decoding uses (gpucnn.data.cache.ArrayWriter: row by row, its
pages handed back as it goes), each image its class's colour plus noise. Then a fresh process
maps it (np.load(mmap_mode="r"), as gpucnn.data.cache.open_images), splits it 90/10, computes
the per-channel statistics of the training part (Normalization.of, in chunks), and trains
LeNet-5 for one epoch through the recipe's loaders and Trainer (batch 128, the cifar preset's;
validation in batches of 1000, as the recipe's; on the CPU the
loaders read each batch's rows from the map and hand the pages back), validating on the rest.
Its peak resident memory (VmHWM: the mapped pages it holds count) is the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import machine  # noqa: E402

TRAIN = """
import json, resource, sys, time
import numpy as np
from pathlib import Path
from gpucnn import data
from gpucnn.backend import get_backend
from gpucnn.train import recipe
from gpucnn.train.callbacks import Callback
from gpucnn.train.config import TrainConfig

path, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
def status(key):  # MB; VmHWM, not ru_maxrss, which counts the parent's pages before exec
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

rss = lambda: status("VmHWM")
most_file = [0.0]

class Probe(Callback):  # the mapped cache's pages this process holds, every 20 batches
    def on_batch_end(self, trainer, batch, logs=None):
        if batch % 20 == 0:
            most_file[0] = max(most_file[0], status("RssFile"))

base = rss()
images = np.load(path, mmap_mode="r", allow_pickle=False)
labels = np.arange(len(images)) % 10
pool = data.Part(images, labels, np.arange(len(images)))
order = np.random.default_rng(0).permutation(len(images))
cut = int(0.9 * len(images))
parts = {"train": pool.take(np.sort(order[:cut])), "val": pool.take(np.sort(order[cut:]))}
parts["test"] = parts["val"]
t0 = time.perf_counter()
norm = data.Normalization.of(images, parts["train"].indices)
t1 = time.perf_counter()
config = TrainConfig(dataset="cifar10", model="lenet5", batch_size=128, epochs=1, device="cpu")
info = {"kind": "folder", "classes": [str(i) for i in range(10)], "shape": [3, 32, 32],
        "normalization": norm.to_dict(), "prepare": None}
backend = get_backend("cpu")
loaders = recipe.make_loaders(config, parts, backend, norm)
trainer = recipe.build_trainer(config, run_dir, backend, progress=False, info=info,
                               train_size=len(parts["train"]), extra_callbacks=(Probe(),))
history = trainer.fit(loaders["train"], loaders["val"], 1)
t2 = time.perf_counter()
print(json.dumps({"base_rss_mb": base, "peak_rss_mb": rss(), "stats_s": t1 - t0,
                  "file_rss_mb": most_file[0], "end_rss_mb": status("VmRSS"),
                  "epoch_s": t2 - t1, "train": len(parts["train"]), "val": len(parts["val"]),
                  "val_accuracy": history["val_accuracy"][-1]}))
"""


def write_cache(path: Path, n: int) -> float:
    """A uint8 (n, 3, 32, 32) cache written row block by row block; returns seconds."""
    import numpy as np

    from gpucnn.data.cache import ArrayWriter

    colours = np.random.default_rng(1).integers(40, 216, (10, 3, 1, 1))
    g = np.random.default_rng(0)
    start = time.perf_counter()
    with ArrayWriter(path.parent, path.name, (n, 3, 32, 32)) as out:
        block = 2_000
        for i in range(0, n, block):
            k = min(block, n - i)
            noise = g.integers(-40, 40, (k, 3, 32, 32), dtype=np.int16)
            rows = (colours[(np.arange(i, i + k) % 10)] + noise).clip(0, 255).astype(np.uint8)
            out.array[i : i + k] = rows
            out.array.flush()
            from gpucnn.data.cache import release_pages

            release_pages(out.array)
        out.commit()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=700_000)
    ap.add_argument("--out", default=None, help="also write the markdown report here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        path = tmp / "images-bench.npy"
        wrote = write_cache(path, args.images)
        size = path.stat().st_size
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        out = subprocess.run(
            [sys.executable, "-c", TRAIN, str(path), str(tmp / "run")],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
    lines = [
        "# Training from a memory-mapped cache larger than its memory",
        "",
        machine.describe(),
        f"- load average before the epoch (1, 5, 15 min): {load}",
        f"- the cache: {args.images:,} uint8 images of 3x32x32, {size / 1e9:.2f} GB "
        f"(written in {wrote:.0f} s)",
        f"- one epoch of LeNet-5, batch 128: {r['train']:,} training images, {r['val']:,} "
        f"validation; per-channel statistics of the training part first",
        "",
        "| what | figure |",
        "|---|---:|",
        f"| peak RSS of the training process (VmHWM) | **{r['peak_rss_mb']:.0f} MB** |",
        f"| its RSS after imports, before the cache was mapped | {r['base_rss_mb']:.0f} MB |",
        f"| the most of the cache's pages it held (RssFile, every 20 batches) | "
        f"{r['file_rss_mb']:.0f} MB |",
        f"| its RSS at the end of the epoch | {r['end_rss_mb']:.0f} MB |",
        f"| the cache on disk | {size / 2**20:.0f} MB |",
        f"| per-channel statistics over the training part | {r['stats_s']:.0f} s |",
        f"| the epoch (training and validation) | {r['epoch_s']:.0f} s |",
        f"| validation accuracy after it | {r['val_accuracy']:.4f} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
