"""Evaluate a checkpoint on its dataset's test set.

    gpucnn evaluate runs/<run>/checkpoints/best.npz
    gpucnn evaluate runs/<run>/checkpoints/best.npz --export-onnx model.onnx

The checkpoint carries its config (dataset, model). The metrics and plots go to its run folder,
named after the checkpoint (metrics-best.json, plots-best/), so the run's own results stay as
training left them; --update-run rewrites those instead (metrics.json, plots/), and
--output-dir puts the files elsewhere. Every file written is listed at the end, after the
logs; the metrics are printed as JSON. It runs here, without Prefect, unless --prefect asks
for a Prefect flow run (against PREFECT_API_URL's server, or Prefect's local API started
while the data is verified). --export-onnx PATH also writes the model as ONNX (opset 17;
input: normalised images (N, C, H, W), output: logits; with --with-preprocessing: uint8
pixels in, probabilities out: (N, H, W) for one channel, (N, H, W, 3) for colour). The file
records its input layout, image size, channels, per-channel normalisation, classes and
gpucnn version (metadata_props, doc_string); ``gpucnn export`` writes that file alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from gpucnn.cli.config import checkpoint_config, verify_data
from gpucnn.cli.export import export_onnx
from gpucnn.cli.run import CHECKPOINT_HELP, command_parser, run_cli

log = logging.getLogger("gpucnn.flows")


def parser(prog: str = "gpucnn evaluate") -> argparse.ArgumentParser:
    ap = command_parser(prog, __doc__)
    ap.add_argument("checkpoint", help=CHECKPOINT_HELP)
    ap.add_argument("--data-dir", default=None, help="dataset cache (default: as trained)")
    ap.add_argument(
        "--mirror",
        action="append",
        default=None,
        metavar="URL",
        help="dataset URL prefix to try first; repeatable",
    )
    ap.add_argument(
        "--output-dir",
        default=None,
        help="where the metrics and plots go (default: the checkpoint's run folder)",
    )
    ap.add_argument(
        "--update-run",
        action="store_true",
        help="write the run's own metrics.json and plots/ (default: metrics-<checkpoint>.json "
        "and plots-<checkpoint>/ beside them)",
    )
    ap.add_argument(
        "--prefect",
        action="store_true",
        help="run as a Prefect flow (artifacts, the run's logs in Prefect); default: here, "
        "without Prefect",
    )
    ap.add_argument(
        "--export-onnx",
        default=None,
        metavar="PATH",
        help="also write the checkpoint's model as ONNX (needs the 'onnx' extra)",
    )
    ap.add_argument(
        "--with-preprocessing",
        action="store_true",
        help="with --export-onnx: the ONNX model takes uint8 pixels, (N, H, W) for one channel "
        "(MNIST: (N, 28, 28)) or (N, H, W, 3) for colour, and returns probabilities (the "
        "per-channel normalisation and softmax in the graph; (N, C, H, W) pixels: "
        "gpucnn.export.onnx(..., preprocessing=True, layout='NCHW'))",
    )
    return ap


def evaluate_here(config: Any, folder: Path, checkpoint: str, name: str | None) -> dict:
    """The evaluation the flow's task makes, in this process and without Prefect."""
    from gpucnn.train import recipe
    from gpucnn.train.runs import evaluation_paths

    metrics = recipe.evaluate_run(config, folder, checkpoint, name=name)
    log.info("test accuracy %.4f on %d images", metrics["accuracy"], metrics["samples"])
    files = [str(evaluation_paths(folder, name)[0]), *metrics["plots"]]
    return {**metrics, "files": files}


def main(argv: list[str] | None = None, prog: str = "gpucnn evaluate") -> int:
    """The command line (``prog``: the name its usage line shows); returns the exit status."""
    ap = parser(prog)
    args = ap.parse_args(argv)
    if args.with_preprocessing and not args.export_onnx:
        ap.error("--with-preprocessing shapes the ONNX export: give --export-onnx PATH too")
    if args.update_run and args.output_dir:
        ap.error(
            "--update-run rewrites the run's own results in the checkpoint's run folder; "
            "--output-dir writes elsewhere: give one of them"
        )

    def body() -> None:
        from gpucnn.logs import ensure_sink
        from gpucnn.train.checkpoint import load_checkpoint
        from gpucnn.train.runs import RunFolder, evaluation_of

        # a bad or poisoned file, a folder in use: said here, before any Prefect
        ckpt = load_checkpoint(args.checkpoint)
        config = checkpoint_config(ckpt.config, args.data_dir, args.mirror)
        folder, name = evaluation_of(args.checkpoint, args.output_dir, args.update_run)
        checkpoint = str(Path(args.checkpoint).resolve())
        files: list[str] = []
        with RunFolder(folder).claim(instead="output_dir"):  # not while a run writes there
            if args.prefect:
                from gpucnn.flows.cli import prefect_ready, start_prefect

                start_prefect()  # its local API starts while the model and data are made ready
            else:
                ensure_sink()  # gpucnn's lines on stderr (the data's, the accuracy)
            if args.export_onnx:
                files.append(
                    str(export_onnx(checkpoint, args.export_onnx, args.with_preprocessing))
                )
            verify_data([config])
            if args.prefect:
                from gpucnn.flows.pipeline import evaluate_flow  # meanwhile too

                prefect_ready()

                result = evaluate_flow(
                    checkpoint, args.data_dir, args.mirror, args.output_dir, args.update_run
                )
            else:
                result = evaluate_here(config, folder, checkpoint, name)
        files += result["files"]
        for path in files:
            print(f"wrote {path}", file=sys.stderr)
        keys = ("accuracy", "loss", "top3_accuracy", "samples")
        print(json.dumps({**{k: result[k] for k in keys}, "files": files}))

    return run_cli(body, interrupted="interrupted")


if __name__ == "__main__":  # python -m gpucnn.cli.evaluate: the same command
    sys.exit(main())
