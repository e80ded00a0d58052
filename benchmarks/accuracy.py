"""Accuracy benchmarks: train a recipe on real MNIST and report test accuracy.

    python benchmarks/accuracy.py --recipe article       # seed model, the article's recipe
    python benchmarks/accuracy.py --recipe augmented     # + BatchNorm, dropout, rotation/shift

Targets (issue #5): article >= 99.2% test accuracy, augmented >= 99.5%. The report (machine,
command, per-epoch curve) goes to runs/accuracy-<recipe>[-<tag>].md, or --out; --record writes
it to benchmarks/results/ instead, replacing the committed result (only when you mean to).
Needs the dataset (downloaded, or --mirror a loopback copy); runs on the CPU by default.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import describe  # noqa: E402
from gpucnn.train.recipe import TrainConfig, evaluate, train  # noqa: E402

RECIPES = {
    "article": {"model": "seed", "augment": "none", "target": 0.992},
    "augmented": {"model": "seed-bn", "augment": "rotate=10,shift=0.1", "target": 0.995},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--recipe", choices=RECIPES, default="article")
    ap.add_argument(
        "--epochs", type=int, default=50, help="upper bound; early stopping ends sooner"
    )
    ap.add_argument("--limit", type=int, default=None, help="use only this many training images")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--monitor",
        default="val_loss",
        choices=["val_loss", "val_accuracy"],
        help="what early stopping and the best checkpoint watch",
    )
    ap.add_argument("--tag", default="", help="suffix for the results file name")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--mirror", action="append", default=None, help="dataset URL prefix")
    ap.add_argument("--run-dir", default=None, help="default: runs/accuracy-<recipe>")
    ap.add_argument("--out", default=None, help="report file (default: runs/accuracy-<recipe>.md)")
    ap.add_argument(
        "--record",
        action="store_true",
        help="write the report to benchmarks/results/ (replacing the committed one)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    recipe = RECIPES[args.recipe]
    config = TrainConfig(
        model=recipe["model"],
        augment=recipe["augment"],
        epochs=args.epochs,
        monitor=args.monitor,
        limit=args.limit,
        device=args.device,
        data_dir=args.data_dir,
        mirrors=args.mirror,
    )
    run_dir = Path(args.run_dir or f"runs/accuracy-{args.recipe}")
    t0 = time.perf_counter()
    summary = train(config, run_dir)
    metrics = evaluate(config, summary["best_checkpoint"])
    wall = time.perf_counter() - t0
    history = json.loads((run_dir / "history.json").read_text())

    ok = metrics["accuracy"] >= recipe["target"]
    lines = [
        f"# Accuracy: the {args.recipe} recipe on MNIST",
        "",
        describe(),
        f"- config: `{json.dumps(config.to_dict())}`",
        "",
        f"**Test accuracy {metrics['accuracy']:.4f}** ({metrics['samples']} test images; "
        f"target {recipe['target']:.3f}: {'met' if ok else 'NOT met'}), test loss "
        f"{metrics['loss']:.4f}, best epoch {summary['best_epoch']} of {summary['epochs']}, "
        f"training {summary['train_time_s']:.0f} s, wall {wall:.0f} s.",
        "",
        "| epoch | train loss | train acc | val loss | val acc | lr | s | img/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, e in enumerate(history["epoch"]):
        lines.append(
            f"| {e} | {history['train_loss'][i]:.4f} | {history['train_accuracy'][i]:.4f} | "
            f"{history['val_loss'][i]:.4f} | {history['val_accuracy'][i]:.4f} | "
            f"{history['lr'][i]:.2g} | {history['elapsed_s'][i]:.0f} | "
            f"{history['images_per_s'][i]:.0f} |"
        )
    lines += [
        "",
        "Per-class test accuracy: "
        + ", ".join(f"{c}: {a:.4f}" for c, a in metrics["per_class_accuracy"].items()),
    ]
    text = "\n".join(lines) + "\n"
    name = f"accuracy-{args.recipe}{'-' + args.tag if args.tag else ''}.md"
    folder = Path(__file__).parent / "results" if args.record else Path("runs")
    out = Path(args.out or folder / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
