"""Float32 error of Winograd convolution against the float64 direct sum, next to im2col's.

    python benchmarks/winograd_error.py [--batch 32] [--seeds 5] [--out FILE]

For the seed model's second conv (32 -> 64 channels, 3×3, padding 1, 14×14) and a wider one,
with inputs and filters drawn N(0, 1), every algorithm computes y, dx and dw in float32; the
reference is the same computation in float64 (im2col in float64, itself checked against the
naive loops in the tests). Reported: the largest error relative to the largest |reference|
(max), and the root-mean-square error relative to the reference's RMS (rms), the worst over
the seeds. These are the figures gpucnn.backend.winograd's docstring quotes and the tolerance
of the float32 torch-parity tests comes from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import describe  # noqa: E402
from gpucnn import functional as F  # noqa: E402
from gpucnn.functional import winograd  # noqa: E402

SHAPES = [(32, 64, 14, 1), (64, 64, 28, 1), (32, 64, 14, 0)]  # (C, F, H=W, padding)


def errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    d = got.astype(np.float64) - ref
    return float(np.abs(d).max() / np.abs(ref).max()), float(
        np.sqrt(np.mean(d * d)) / np.sqrt(np.mean(ref * ref))
    )


def measure(c: int, f: int, hw: int, pad: int, batch: int, seed: int) -> dict[str, dict]:
    g = np.random.default_rng(seed)
    x = g.standard_normal((batch, c, hw, hw))
    w = g.standard_normal((f, c, 3, 3))
    y64, cache = F.conv2d_forward(x, w, None, 1, pad, algorithm="im2col")
    dy = g.standard_normal(y64.shape)
    dx64, dw64, _ = F.conv2d_backward(dy, cache)
    x32, w32, dy32 = (a.astype(np.float32) for a in (x, w, dy))
    out = {}
    runs = {
        "im2col": lambda: F.conv2d_forward(x32, w32, None, 1, pad, algorithm="im2col"),
        "winograd F(2x2,3x3)": lambda: winograd.forward(x32, w32, None, pad, 2),
        "winograd F(4x4,3x3)": lambda: winograd.forward(x32, w32, None, pad, 4),
    }
    for name, run in runs.items():
        y, c32 = run()
        if name == "im2col":
            dx, dw, _ = F.conv2d_backward(dy32, c32)
        else:
            dx, dw, _ = winograd.backward(dy32, c32)
        out[name] = {"y": errors(y, y64), "dx": errors(dx, dx64), "dw": errors(dw, dw64)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="write the table here as well")
    args = ap.parse_args()
    lines = [
        "# Float32 error of the convolution algorithms against float64",
        "",
        describe(),
        "",
        "Worst over the seeds; max = largest |error| / largest |reference|, "
        "rms = RMS error / RMS reference.",
        "",
        "| layer | algorithm | y max | y rms | dx max | dx rms | dw max | dw rms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c, f, hw, pad in SHAPES:
        worst: dict[str, dict] = {}
        for seed in range(args.seeds):
            for name, errs in measure(c, f, hw, pad, args.batch, seed).items():
                w = worst.setdefault(name, {k: (0.0, 0.0) for k in errs})
                for k, (mx, rms) in errs.items():
                    w[k] = (max(w[k][0], mx), max(w[k][1], rms))
        for name, w in worst.items():
            cells = " | ".join(f"{w[k][0]:.1e} | {w[k][1]:.1e}" for k in ("y", "dx", "dw"))
            lines.append(f"| {c}→{f}, {hw}×{hw}, pad {pad} | {name} | {cells} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
