"""Accuracy benchmarks: train a recipe on real MNIST and report test accuracy.

    python benchmarks/accuracy.py --recipe article       # seed model, the article's recipe
    python benchmarks/accuracy.py --recipe augmented     # + BatchNorm, dropout, rotation/shift
    python benchmarks/accuracy.py --recipe fast --seeds 5   # TrainConfig.preset("fast")

Targets: article >= 99.2% test accuracy, augmented >= 99.5% (issue #5); fast >= 99.0% mean
test accuracy over the seeds in the least training time. ``--set field=value`` (repeatable)
changes any TrainConfig field, to try variants of a recipe. ``--seeds N`` trains seeds
0..N-1 and reports each, their mean and minimum test accuracy and mean training time.

The report (machine, command, results, the per-epoch curve of the first seed) goes to
runs/accuracy-<recipe>[-<tag>].md, or --out; --record writes it to benchmarks/results/
instead, replacing the committed result (only when you mean to). Each seed trains in its own
folder under --run-dir, named after its config: a finished run with the same config is
reported again, not retrained (delete the folder to retrain). Needs the dataset (downloaded,
or --mirror a loopback copy); runs on the CPU by default.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import describe  # noqa: E402
from gpucnn.train.config import field_types  # noqa: E402
from gpucnn.train.recipe import TrainConfig, evaluate, train  # noqa: E402
from gpucnn.train.runs import default_run_name  # noqa: E402

RECIPES: dict[str, dict[str, Any]] = {
    "article": {"fields": {"model": "seed", "augment": "none", "epochs": 50}, "target": 0.992},
    "augmented": {
        "fields": {"model": "seed-bn", "augment": "rotate=10,shift=0.1", "epochs": 50},
        "target": 0.995,
    },
    "fast": {"preset": "fast", "fields": {}, "target": 0.990},
}


def parse_set(items: list[str]) -> dict[str, Any]:
    """``field=value`` items as TrainConfig values (the field's type; bools as yes/no)."""
    types = field_types()
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in types:
            raise SystemExit(f"--set {item!r}: expected field=value with a TrainConfig field")
        kind, is_list = types[name]
        if is_list:
            raise SystemExit(f"--set {item!r}: list fields are not supported here")
        if kind is bool:
            out[name] = text.strip().lower() in ("1", "true", "yes")
        else:
            out[name] = kind(text.strip())
    return out


def make_config(recipe: dict[str, Any], **fields: Any) -> TrainConfig:
    fields = {**recipe["fields"], **fields}
    if "preset" in recipe:
        return TrainConfig.preset(recipe["preset"], **fields)
    return TrainConfig(**fields)


def run_seed(config: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """Train (or find trained) and evaluate one config; its summary, metrics and history."""
    t0 = time.perf_counter()
    summary = train(config, run_dir)
    metrics = evaluate(config, summary["best_checkpoint"])
    wall = time.perf_counter() - t0
    history = json.loads((run_dir / "history.json").read_text())
    # the training passes alone (the epochs' times include the validation pass)
    fit_s = sum(config.train_size / v for v in history["images_per_s"])
    return {
        "seed": config.seed,
        "summary": summary,
        "metrics": metrics,
        "history": history,
        "wall": wall,
        "fit_s": fit_s,
    }


def curve(history: dict[str, list]) -> list[str]:
    lines = [
        "| epoch | train loss | train acc | val loss | val acc | lr at start | s | img/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, e in enumerate(history["epoch"]):
        lines.append(
            f"| {e} | {history['train_loss'][i]:.4f} | {history['train_accuracy'][i]:.4f} | "
            f"{history['val_loss'][i]:.4f} | {history['val_accuracy'][i]:.4f} | "
            f"{history['lr'][i]:.2g} | {history['elapsed_s'][i]:.0f} | "
            f"{history['images_per_s'][i]:.0f} |"
        )
    return lines


def report(name: str, target: float, config: TrainConfig, runs: list[dict[str, Any]]) -> str:
    accs = [r["metrics"]["accuracy"] for r in runs]
    times = [r["summary"]["train_time_s"] for r in runs]
    mean = statistics.fmean(accs)
    ok = "met" if mean >= target else "NOT met"
    first = runs[0]
    first_config = config.replace(seed=first["seed"])
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        f"# Accuracy: the {name} recipe on MNIST",
        "",
        describe(),
        f"- load average at the end (1/5/15 min): {load}",
        f"- config (seed {first['seed']}): `{json.dumps(first_config.to_dict())}`",
        "",
    ]
    if len(runs) == 1:
        s, m = first["summary"], first["metrics"]
        lines.append(
            f"**Test accuracy {m['accuracy']:.4f}** ({m['samples']} test images; target "
            f"{target:.3f}: {ok}), test loss {m['loss']:.4f}, best epoch {s['best_epoch']} of "
            f"{s['epochs']}, training {s['train_time_s']:.0f} s, wall {first['wall']:.0f} s."
        )
    else:
        lines += [
            f"**Mean test accuracy {mean:.4f} over {len(runs)} seeds** (min {min(accs):.4f}, "
            f"max {max(accs):.4f}; target {target:.3f}: {ok}); mean training time "
            f"{statistics.fmean(times):.1f} s (of which the training passes "
            f"{statistics.fmean(r['fit_s'] for r in runs):.1f} s, the rest validation), "
            f"mean wall {statistics.fmean(r['wall'] for r in runs):.0f} s per seed.",
            "",
            "| seed | test acc | test loss | best epoch | epochs | training s | training "
            "passes s | wall s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in runs:
            s, m = r["summary"], r["metrics"]
            lines.append(
                f"| {r['seed']} | {m['accuracy']:.4f} | {m['loss']:.4f} | {s['best_epoch']} | "
                f"{s['epochs']} | {s['train_time_s']:.1f} | {r['fit_s']:.1f} | {r['wall']:.0f} |"
            )
        lines += ["", f"Seed {first['seed']}, per epoch:"]
    lines += ["", *curve(first["history"]), ""]
    lines.append(
        f"Per-class test accuracy (seed {first['seed']}): "
        + ", ".join(f"{c}: {a:.4f}" for c, a in first["metrics"]["per_class_accuracy"].items())
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--recipe", choices=RECIPES, default="article")
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="article, augmented: an upper bound (default 50), early stopping ends sooner; "
        "fast: the length of the cycle (default: the preset's)",
    )
    ap.add_argument("--seeds", type=int, default=1, help="train seeds 0..N-1 (default: 1)")
    ap.add_argument("--limit", type=int, default=None, help="use only this many training images")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--monitor",
        default="val_loss",
        choices=["val_loss", "val_accuracy"],
        help="what early stopping and the best checkpoint watch",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a TrainConfig field (repeatable), e.g. --set lr=5e-3 --set batch_size=256",
    )
    ap.add_argument("--tag", default="", help="suffix for the results file name")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--mirror", action="append", default=None, help="dataset URL prefix")
    ap.add_argument(
        "--run-dir",
        default=None,
        help="parent of the seeds' run folders (default: runs/accuracy-<recipe>)",
    )
    ap.add_argument("--out", default=None, help="report file (default: runs/accuracy-<recipe>.md)")
    ap.add_argument(
        "--record",
        action="store_true",
        help="write the report to benchmarks/results/ (replacing the committed one)",
    )
    args = ap.parse_args()
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    recipe = RECIPES[args.recipe]
    fields: dict[str, Any] = {
        "monitor": args.monitor,
        "limit": args.limit,
        "device": args.device,
        "data_dir": args.data_dir,
        "mirrors": args.mirror,
    }
    if args.epochs is not None:
        fields["epochs"] = args.epochs
    config = make_config(recipe, **fields, **parse_set(args.set))
    parent = Path(args.run_dir or f"runs/accuracy-{args.recipe}")
    runs = []
    for seed in range(args.seeds):
        seeded = config.replace(seed=seed)
        runs.append(run_seed(seeded, parent / default_run_name(seeded)))
        m = runs[-1]["metrics"]
        print(
            f"seed {seed}: test accuracy {m['accuracy']:.4f}, training "
            f"{runs[-1]['summary']['train_time_s']:.1f} s",
            flush=True,
        )

    text = report(args.recipe, recipe["target"], config, runs)
    name = f"accuracy-{args.recipe}{'-' + args.tag if args.tag else ''}.md"
    folder = Path(__file__).parent / "results" if args.record else Path("runs")
    out = Path(args.out or folder / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
