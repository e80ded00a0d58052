"""The main job: download MNIST, train the article's seed CNN with early stopping, evaluate.

    python -m gpucnn.flows.train                       # the defaults: MNIST, seed model
    python -m gpucnn.flows.train --limit 2000 --epochs 2   # a quick run
    python -m gpucnn.flows.train --model resnet --augment default

Runs as a Prefect flow against Prefect's own local API (an ephemeral SQLite server; nothing
to start), or against the server PREFECT_API_URL names. Everything lands in a run folder
(--output-dir/<run name>): config.json, data.json, checkpoints/, history.json, metrics.json,
plots/. Running the same command again resumes a crashed run from its last checkpoint; a
finished run is not trained again (--no-resume starts over).
"""

from __future__ import annotations

import argparse
import json
import sys

from gpucnn.backend import get_backend
from gpucnn.flows.cli import (
    add_config_options,
    config_from,
    prepare_prefect_env,
    quiet_expected_tracebacks,
    run_cli,
)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m gpucnn.flows.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_options(ap)
    out = ap.add_argument_group("output")
    out.add_argument("--output-dir", default="runs", help="parent of run folders (default: runs)")
    out.add_argument(
        "--run-name",
        default=None,
        help="run folder name (default: dataset-model-<hash of the config>)",
    )
    out.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue a crashed run / skip a finished one (default: on)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> None:
        config = config_from(args)  # every value checked before Prefect starts
        if config.device == "cuda":
            get_backend("cuda")  # a missing GPU or CuPy fails here, not inside the flow
        prepare_prefect_env()
        from pathlib import Path

        from gpucnn.flows.pipeline import default_run_name, train_flow

        quiet_expected_tracebacks()
        name = args.run_name or default_run_name(config)
        if not args.resume:
            for stale in ("summary.json", "checkpoints/last.npz"):
                (Path(args.output_dir) / name / stale).unlink(missing_ok=True)
        result = train_flow(config=config, output_dir=args.output_dir, run_name=name)
        test = result["test"]
        print(
            json.dumps(
                {
                    "run_dir": result["run_dir"],
                    "epochs": result["epochs"],
                    "best_epoch": result["best_epoch"],
                    "test_accuracy": test["accuracy"],
                    "test_loss": test["loss"],
                }
            )
        )

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
