"""Evaluate a checkpoint on its dataset's test set.

    python -m gpucnn.flows.evaluate runs/<run>/checkpoints/best.npz

The checkpoint carries its config (dataset, model); metrics.json, plots and Prefect
artifacts go to its run folder unless --output-dir says otherwise. --export-onnx PATH also
writes the model as ONNX (opset 17; input: normalised images (N, 1, 28, 28), output: logits;
with --with-preprocessing: uint8 pixels (N, 28, 28) in, probabilities out). The file records
its input layout, normalisation, classes and gpucnn version (metadata_props, doc_string).
"""

from __future__ import annotations

import argparse
import json
import sys

from gpucnn.flows.cli import prepare_prefect_env, quiet_expected_tracebacks, run_cli


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gpucnn.flows.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("checkpoint", help="a .npz checkpoint written by a training run")
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
        help="where metrics.json and plots go (default: the run folder)",
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
        help="with --export-onnx: the ONNX model takes uint8 pixels (N, 28, 28) and returns "
        "probabilities (the normalisation and softmax in the graph; (N, 1, 28, 28) pixels: "
        "gpucnn.export.onnx(..., preprocessing=True, layout='NCHW'))",
    )
    args = ap.parse_args(argv)
    if args.with_preprocessing and not args.export_onnx:
        ap.error("--with-preprocessing shapes the ONNX export: give --export-onnx PATH too")

    def body() -> None:
        from gpucnn.train.checkpoint import load_checkpoint

        load_checkpoint(args.checkpoint)  # a bad or poisoned file fails here, before Prefect
        if args.export_onnx:
            import gpucnn

            try:
                path = gpucnn.export.onnx(
                    gpucnn.load(args.checkpoint),
                    args.export_onnx,
                    preprocessing=args.with_preprocessing,
                )
            except ImportError as exc:  # the extra is missing: one line, not a traceback
                raise ValueError(str(exc)) from exc
            print(f"wrote {path}", file=sys.stderr)
        prepare_prefect_env()
        from gpucnn.flows.pipeline import evaluate_flow

        quiet_expected_tracebacks()

        result = evaluate_flow(args.checkpoint, args.data_dir, args.mirror, args.output_dir)
        print(json.dumps({k: result[k] for k in ("accuracy", "loss", "top3_accuracy", "samples")}))

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
