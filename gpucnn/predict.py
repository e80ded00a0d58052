"""Classify image files with a trained checkpoint.

    python -m gpucnn.predict --checkpoint runs/<run>/checkpoints/best.npz digit.png more.jpg

Each image is read with Pillow (the optional "images" extra), turned to grayscale, inverted
when its background is light (MNIST digits are light on dark), resized to 28×28 and
normalised with the dataset's constants; the output is the class and its probability, and the
top 3.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def load_image(path: str | Path, size: int = 28) -> np.ndarray:
    """An image file as uint8 (size, size), light strokes on a dark background."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:
        raise SystemExit(
            "error: reading images needs Pillow: pip install 'gpucnn[images]'"
        ) from exc
    try:
        with Image.open(path) as img:
            gray = img.convert("L").resize((size, size), Image.Resampling.LANCZOS)
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from exc
    a = np.asarray(gray, dtype=np.uint8)
    return 255 - a if a.mean() > 127 else a


def predict_files(checkpoint: str | Path, paths: list[str], top: int = 3) -> list[dict]:
    from gpucnn import data, models
    from gpucnn.functional import softmax
    from gpucnn.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    dataset = ckpt.config.get("dataset", "mnist")
    spec = data.get_spec(dataset)
    model = models.build(ckpt.config.get("model", "seed"), num_classes=len(spec.classes))
    ckpt.check_model(model)
    model.load_state_dict(ckpt.model_state())
    model.eval()
    images = np.stack([load_image(p) for p in paths])
    x = ((images.astype(np.float32) / 255 - spec.mean) / spec.std)[:, None]
    probs = softmax(model(x.astype(np.float32)))
    out = []
    for path, p in zip(paths, probs, strict=True):
        order = np.argsort(-p)[:top]
        out.append(
            {
                "path": str(path),
                "class": spec.classes[order[0]],
                "probability": float(p[order[0]]),
                "top": [(spec.classes[i], float(p[i])) for i in order],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gpucnn.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("images", nargs="+", help="PNG or JPEG files")
    ap.add_argument("--checkpoint", required=True, help="a checkpoint .npz from a training run")
    ap.add_argument("--top", type=int, default=3, help="how many classes to list (default 3)")
    args = ap.parse_args(argv)
    from gpucnn.train.errors import CheckpointError

    try:
        results = predict_files(args.checkpoint, args.images, args.top)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for r in results:
        others = ", ".join(f"{c} {p:.3f}" for c, p in r["top"])
        print(f"{r['path']}: {r['class']} (p={r['probability']:.3f})  top: {others}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
