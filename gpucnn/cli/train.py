"""The main job: download MNIST, train the article's seed CNN with early stopping, evaluate.

    gpucnn train                                # the defaults: MNIST, seed model
    gpucnn train --limit 2000 --epochs 2        # a quick run
    gpucnn train --model resnet --augment default

Runs as a Prefect flow against Prefect's own local API (an ephemeral SQLite server, started
while the data is verified; nothing to start yourself), or against the server
PREFECT_API_URL names. Everything lands in a run folder (--output-dir/<run name>):
config.json, data.json, checkpoints/, history.json, metrics.json, plots/, log.txt (every
line of the run, also when this command's output has gone away). Running the same command
again resumes a crashed run from its last checkpoint and reports a finished one at once,
without Prefect, training or evaluating; a folder holding a run of another config is refused
(--overwrite starts it over). One process at a time owns a run folder. --limit shrinks the
training data only: test metrics are always on the whole test set.
"""

from __future__ import annotations

import argparse
import json
import sys

from gpucnn.cli.config import (
    add_config_options,
    add_preset_option,
    config_from,
    parse_args,
    verify_data,
)
from gpucnn.cli.run import bad_values, command_parser, run_cli


def parser(prog: str = "gpucnn train") -> argparse.ArgumentParser:
    ap = command_parser(prog, __doc__)
    add_preset_option(ap)
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
        help="continue a crashed run / report a finished one (default: on); --no-resume is "
        "--overwrite",
    )
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="clear the run folder's checkpoints and results and train from scratch",
    )
    return ap


def main(argv: list[str] | None = None, prog: str = "gpucnn train") -> int:
    """The command line (``prog``: the name its usage line shows); returns the exit status."""
    args = parse_args(parser(prog), argv)

    def body() -> None:
        from pathlib import Path

        from gpucnn.backend import get_backend
        from gpucnn.logs import run_log
        from gpucnn.train.runs import RunFolder, check_run_name, default_run_name, plural

        # everything that can be answered without a flow is answered here, before Prefect
        with bad_values():
            config = config_from(args)
            name = check_run_name(args.run_name or default_run_name(config))
        if config.device == "cuda":
            get_backend("cuda")  # a missing GPU or CuPy fails now, not inside the flow
        overwrite = args.overwrite or not args.resume
        folder = RunFolder(Path(args.output_dir) / name)
        if not overwrite:
            folder.check_config(config)
        with folder.claim():  # held until the flow ends; another process fails at once
            result = None if overwrite else folder.finished_result()
            if result is None:
                from gpucnn.flows.cli import api_gone_at_the_end, prefect_ready, start_prefect

                start_prefect()  # its local API starts while the data is verified
                verify_data([config])
                from gpucnn.flows.pipeline import RUN_LOGGERS, train_flow  # meanwhile too

                prefect_ready()

                # open around the flow: Prefect's records after it (a crash) reach log.txt
                with run_log(folder.path / "log.txt", RUN_LOGGERS):
                    try:
                        result = train_flow(
                            config=config,
                            output_dir=args.output_dir,
                            run_name=name,
                            overwrite=overwrite,
                        )
                    except Exception as exc:  # the work done, Prefect's API gone at its end?
                        result = api_gone_at_the_end(exc, folder)
        test = result["test"]
        if result["already_finished"]:
            print(
                f"run {result['run_dir']} already finished: {plural(result['epochs'], 'epoch')}, "
                f"best epoch {result['best_epoch']}, test accuracy {test['accuracy']:.4f}; "
                f"its results are in {result['run_dir']} (--overwrite trains it again)",
                file=sys.stderr,
            )
        print(
            json.dumps(
                {
                    "run_dir": result["run_dir"],
                    "epochs": result["epochs"],
                    "best_epoch": result["best_epoch"],
                    "test_accuracy": test["accuracy"],
                    "test_loss": test["loss"],
                    "already_finished": result["already_finished"],
                }
            )
        )

    return run_cli(body)


if __name__ == "__main__":  # python -m gpucnn.cli.train: the same command
    sys.exit(main())
