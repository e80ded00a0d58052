"""Write a checkpoint's model as an ONNX file.

    gpucnn export runs/<run>/checkpoints/best.npz model.onnx
    gpucnn export runs/<run>/checkpoints/best.npz model.onnx --with-preprocessing

The file is ONNX opset 17 with a dynamic batch axis. Input: normalised images (N, C, H, W);
output: logits. With --with-preprocessing the per-channel normalisation and the softmax are in
the graph: uint8 pixels in, probabilities out, (N, H, W) for one channel (MNIST: (N, 28, 28))
and (N, H, W, 3) for colour ((N, C, H, W) pixels: gpucnn.export.onnx(..., preprocessing=True,
layout='NCHW')). The file records its input layout, image size, channels, per-channel
normalisation, classes and gpucnn version (metadata_props, doc_string). Needs the
'onnx' extra (pip install 'gpucnn[onnx]'). Prints the file written as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpucnn.cli.run import CHECKPOINT_HELP, command_parser, run_cli


def export_onnx(checkpoint: str, path: str, preprocessing: bool) -> Path:
    """The checkpoint's model as an ONNX file (a missing extra: one line, not a traceback)."""
    import gpucnn

    try:
        return gpucnn.export.onnx(gpucnn.load(checkpoint), path, preprocessing=preprocessing)
    except ImportError as exc:
        raise ValueError(str(exc)) from exc


def parser(prog: str = "gpucnn export") -> argparse.ArgumentParser:
    ap = command_parser(prog, __doc__)
    ap.add_argument("checkpoint", help=CHECKPOINT_HELP)
    ap.add_argument("path", help="the .onnx file to write")
    ap.add_argument(
        "--with-preprocessing",
        action="store_true",
        help="the ONNX model takes uint8 pixels, (N, H, W) for one channel (MNIST: (N, 28, 28)) "
        "or (N, H, W, 3) for colour, and returns probabilities (the per-channel normalisation "
        "and softmax in the graph)",
    )
    return ap


def main(argv: list[str] | None = None, prog: str = "gpucnn export") -> int:
    """The command line (``prog``: the name its usage line shows); returns the exit status."""
    args = parser(prog).parse_args(argv)

    def body() -> None:
        path = export_onnx(args.checkpoint, args.path, args.with_preprocessing)
        print(f"wrote {path}", file=sys.stderr)
        print(json.dumps({"file": str(path), "preprocessing": args.with_preprocessing}))

    return run_cli(body, interrupted="interrupted")


if __name__ == "__main__":  # python -m gpucnn.cli.export: the same command
    sys.exit(main())
