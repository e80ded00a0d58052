"""Wall time of the command lines, two versions of the code side by side.

    PYTHONPATH=. python benchmarks/cli_latency.py --before /tmp/old-checkout --data-dir DIR

``--before`` is another checkout of the repository (``git worktree add`` or ``git archive``
of an earlier commit); ``--after`` (default: this one) the code to compare with it. Each
command runs ``--repeats`` times per version, the versions interleaved (before, after, then
after, before, ...) so that both meet the same load; each version has its own Prefect home,
warmed by one run first (its database made), as a user's is after the first command. The
commands: a finished run reported again, a run folder held by another process, a config
that differs from the folder's, a bad value, ``flows.evaluate`` (also with
``--export-onnx``), ``gpucnn.predict``, and the main job's start (``--limit 600 --epochs
1``: the time until epoch 1's line, and in all). ``DIR/mnist/`` must hold verified MNIST.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import describe

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--limit", "600", "--epochs", "1", "--device", "cpu"]


def timed(tree: Path, args: list[str], env: dict, mark: str | None = None) -> dict:
    """Run ``python ARGS`` in ``tree``; the wall time, and when ``mark`` first appeared on
    stderr."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=tree,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if mark and seen is None and mark in line:
            seen = time.monotonic() - t0
    proc.wait()
    return {"wall": time.monotonic() - t0, "mark": seen, "code": proc.returncode, "err": lines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, type=Path, help="the earlier checkout")
    ap.add_argument("--after", default=ROOT, type=Path, help="(default: this checkout)")
    ap.add_argument("--data-dir", required=True, help="a folder whose mnist/ holds MNIST")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cli-latency.md"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cli-latency-"))
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GPUCNN_"))}
    envs = {
        v: {**base, "PREFECT_HOME": str(work / f"prefect-{v}"), "PYTHONPATH": str(t)}
        for v, t in trees.items()
    }
    data = ["--data-dir", args.data_dir]
    runs = work / "runs"

    # a finished run (trained by each version once: its Prefect home warmed meanwhile)
    for v in trees:
        out = timed(trees[v], ["-m", "gpucnn.flows.train", *QUICK, *data, "--output-dir",
                               str(runs), "--run-name", f"done-{v}"], envs[v])  # fmt: skip
        assert out["code"] == 0, "".join(out["err"][-20:])
    digit = work / "digit.png"
    subprocess.run(
        [sys.executable, "-c", "import sys, numpy as np; from PIL import Image; "
         "from gpucnn import data; x, _ = data.load('mnist', 'test', root=sys.argv[1]); "
         "Image.fromarray(x[0]).save(sys.argv[2])", args.data_dir, str(digit)],
        cwd=trees["after"], env=envs["after"], check=True,
    )  # fmt: skip
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from gpucnn.train.runs import RunFolder\n"
         "with RunFolder(sys.argv[1]).claim():\n    print('held', flush=True); time.sleep(3600)",
         str(runs / "held")],
        cwd=trees["after"], env=envs["after"], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"

    def done(v: str) -> list[str]:
        return [*QUICK, *data, "--output-dir", str(runs), "--run-name", f"done-{v}"]

    def best(v: str) -> str:
        return str(runs / f"done-{v}" / "checkpoints" / "best.npz")

    train = ["-m", "gpucnn.flows.train"]
    evaluate = ["-m", "gpucnn.flows.evaluate"]
    commands = {
        "a finished run, reported again": lambda v, i: (train + done(v), None),
        "a run folder held by another process": lambda v, i: (
            train + [*QUICK, *data, "--output-dir", str(runs), "--run-name", "held"], None),
        "a config that differs from the folder's (--lr 0.05)": lambda v, i: (
            train + [*done(v), "--lr", "0.05"], None),
        "a bad value (--lr -1)": lambda v, i: (train + ["--lr", "-1"], None),
        "flows.evaluate CHECKPOINT": lambda v, i: (
            evaluate + [best(v), "--output-dir", str(work / f"eval-{v}-{i}")], None),
        "flows.evaluate CHECKPOINT --export-onnx model.onnx": lambda v, i: (
            evaluate + [best(v), "--output-dir", str(work / f"onnx-{v}-{i}"), "--export-onnx",
                        str(work / f"model-{v}-{i}.onnx")], None),
        "gpucnn.predict --checkpoint CHECKPOINT digit.png": lambda v, i: (
            ["-m", "gpucnn.predict", "--checkpoint", best(v), str(digit)], None),
        "the main job's start (a new run, --limit 600 --epochs 1)": lambda v, i: (
            train + [*QUICK, *data, "--output-dir", str(runs), "--run-name", f"new-{v}-{i}"],
            "epoch 1/1"),
    }  # fmt: skip
    results: dict[str, dict[str, list[dict]]] = {c: {v: [] for v in trees} for c in commands}
    try:
        for i in range(args.repeats):
            for name, make in commands.items():
                order = list(trees) if i % 2 == 0 else list(reversed(trees))
                for v in order:
                    argv, mark = make(v, i)
                    out = timed(trees[v], argv, envs[v], mark)
                    results[name][v].append(out)
                    print(f"{name} [{v}] {out['wall']:.1f} s exit {out['code']}", flush=True)
    finally:
        holder.kill()
        holder.wait()

    def cell(outs: list[dict], key: str) -> str:
        values = [o[key] for o in outs if o[key] is not None]
        if not values:
            return "-"
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    lines = [
        "# Command-line latency, before and after",
        "",
        describe(),
        f"- before: `{trees['before']}`; after: `{trees['after']}`; {args.repeats} runs each, "
        "interleaved; each version with its own Prefect home, warmed by one run first",
        "",
        "Wall seconds, median (min-max); exit status of the runs. The main job's row also gives "
        "the time until epoch 1's line (its epoch itself is about the same in both).",
        "",
        "| command | before | after | exit before / after |",
        "|---|---:|---:|---|",
    ]
    for name, by in results.items():
        codes = " / ".join(",".join(sorted({str(o["code"]) for o in by[v]})) for v in trees)
        lines.append(f"| {name} | {cell(by['before'], 'wall')} | {cell(by['after'], 'wall')} | "
                     f"{codes} |")  # fmt: skip
        if any(o["mark"] is not None for v in trees for o in by[v]):
            lines.append(f"| ... until epoch 1's line | {cell(by['before'], 'mark')} | "
                         f"{cell(by['after'], 'mark')} | |")  # fmt: skip
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
