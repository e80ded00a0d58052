"""An image folder's first and second start: decoding 10,000 images into the cache, then
opening the cache again, each in a fresh process.

    GPUCNN_DATA_MIRROR=URL python benchmarks/image_cache.py [--images 10000] [--out FILE]

The folder is written first from real MNIST test digits as a user's photos would arrive: one
subfolder per class, each digit tinted with its class's colour, every other file a JPEG, every
third resized to 42x42 or 56x56 (tests/data/imagefolders.py). Then, each in its own process
(Python's start and gpucnn's import included in the wall time):

1. the first run's data step: scan the folder, read every header, decode every image into the
   uint8 cache (28x28 RGB, the rule of gpucnn.data.images), write it atomically;
2. the second run's: scan the folder, check the file list, sizes and times against the
   cache's manifest, map the cache, split it per class and compute the per-channel statistics
   (gpucnn.train.recipe.load_data: what a run does before its first step).
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

STEP = """
import json, sys, time
t0 = time.perf_counter()
from gpucnn.train.config import TrainConfig
from gpucnn.train.recipe import load_data
from gpucnn import data
t1 = time.perf_counter()
folder, cache, step = sys.argv[1:4]
if step == "first":
    data.download(folder, cache)
run = load_data(TrainConfig(dataset=folder, data_dir=cache))
t2 = time.perf_counter()
n = sum(map(len, run.parts.values()))
print(json.dumps({"import_s": t1 - t0, "data_s": t2 - t1, "images": n,
                  "shape": list(run.dataset.shape), "norm": run.normalization.to_dict()}))
"""


def timed(folder: Path, cache: Path, step: str) -> dict:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", STEP, str(folder), str(cache), step],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--out", default=None, help="also write the markdown report here")
    args = ap.parse_args()
    from gpucnn import data
    from tests.data.imagefolders import write_digits

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        x, y = data.load("mnist", "test", root=tmp / "mnist")
        start = time.perf_counter()
        write_digits(tmp / "photos", x[: args.images], y[: args.images], colour=True, mixed=True)
        written = time.perf_counter() - start
        size = sum(p.stat().st_size for p in (tmp / "photos").rglob("*") if p.is_file())
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        first = timed(tmp / "photos", tmp / "cache", "first")
        second = timed(tmp / "photos", tmp / "cache", "second")
    lines = [
        "# An image folder's first and second start",
        "",
        machine.describe(),
        f"- load average before the runs (1, 5, 15 min): {load}",
        f"- the folder: {args.images:,} real MNIST test digits as tinted PNG and JPEG files of "
        f"28x28, 42x42 and 56x56 pixels in 10 class folders, {size / 1e6:.1f} MB "
        f"(written in {written:.1f} s); cached as {first['shape']} uint8",
        "",
        "| step (a fresh process each) | data step | import | wall, Python's start included |",
        "|---|---:|---:|---:|",
        f"| first run: scan, decode {first['images']:,} images, write the cache, split, "
        f"statistics | {first['data_s']:.1f} s | {first['import_s']:.1f} s | "
        f"{first['wall_s']:.1f} s |",
        f"| second run: scan, check the manifest, map the cache, split, statistics | "
        f"{second['data_s']:.2f} s | {second['import_s']:.1f} s | {second['wall_s']:.1f} s |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
