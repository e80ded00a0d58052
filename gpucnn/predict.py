"""Classify image files with a trained checkpoint.

    gpucnn predict --checkpoint runs/<run>/checkpoints/best.npz digit.png more.jpg
    python -m gpucnn.predict ...          (the same command)

Each image is read with Pillow (the optional "images" extra), of any size and mode, and
prepared as the checkpoint's run prepared its training images:

- a model of a folder of images or of CIFAR-10: converted to RGB (or grayscale, when the run
  was), turned upright by its EXIF orientation, its shorter side resized to the model's size
  and the centre square cropped (gpucnn.data.images);
- a model of digits (MNIST, Fashion-MNIST, KMNIST): a transparent image (a digit drawn on a
  transparent canvas) is composited over a background that contrasts with its ink; the image
  is turned to grayscale, inverted when its background is light (MNIST digits are light on
  dark), resized to 28×28.

Then it is normalised with the run's per-channel constants; the output is the class and its
probability, and the top 3. Images larger than Pillow's pixel limit
(Image.MAX_IMAGE_PIXELS) are refused, and, for digits, images smaller than 8×8 or of a
single shade.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

MIN_SIDE = 8  # pixels: below this an image holds no digit worth resizing to 28×28
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's default Image.MAX_IMAGE_PIXELS (0.25 GB of RGBA)


def _pil():
    try:
        from PIL import Image, ImageStat, UnidentifiedImageError
    except ImportError as exc:
        raise SystemExit(
            "error: reading images needs Pillow: pip install 'gpucnn[images]'"
        ) from exc
    return Image, ImageStat, UnidentifiedImageError


def _grayscale(img, Image, ImageStat):  # noqa: N803 (Pillow's module names)
    """The image as mode "L". With transparency, ink (alpha) goes over a background of the
    opposite shade to the ink's alpha-weighted mean gray: dark or coloured ink on a
    transparent canvas stays visible, whatever colour the transparent pixels carry."""
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if not has_alpha:
        return img.convert("L")
    rgba = img.convert("RGBA")
    gray, alpha = rgba.convert("L"), rgba.getchannel("A")
    total = ImageStat.Stat(alpha).sum[0]
    if total == 0:  # fully transparent: nothing drawn
        return Image.new("L", img.size, 0)
    ink = Image.composite(gray, Image.new("L", img.size, 0), alpha)  # gray * alpha / 255
    ink_mean = 255 * ImageStat.Stat(ink).sum[0] / total
    background = Image.new("L", img.size, 255 if ink_mean < 128 else 0)
    return Image.composite(gray, background, alpha)


def load_image(path: str | Path, size: int = 28) -> np.ndarray:
    """An image file as uint8 (size, size), light strokes on a dark background.

    Raises:
        ValueError: not a readable image, smaller than 8×8, larger than the pixel limit
            (Pillow's Image.MAX_IMAGE_PIXELS), or of a single shade (nothing drawn).
    """
    Image, ImageStat, UnidentifiedImageError = _pil()
    limit = Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS
    too_big = f"larger than the limit of {limit:,} pixels (PIL.Image.MAX_IMAGE_PIXELS)"
    try:
        with warnings.catch_warnings():
            # Pillow only warns between the limit and twice it; we refuse there as well
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > limit:
                    raise ValueError(f"{path}: image of {w}x{h} pixels is {too_big}")
                if min(w, h) < MIN_SIDE:
                    raise ValueError(
                        f"{path}: image of {w}x{h} pixels is too small; "
                        f"need at least {MIN_SIDE}x{MIN_SIDE}"
                    )
                gray = _grayscale(img, Image, ImageStat)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{path}: image is {too_big} ({exc})") from exc
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from exc
    lo, hi = gray.getextrema()
    if lo == hi:
        raise ValueError(f"{path}: image is a single shade ({lo}); nothing is drawn on it")
    a = np.asarray(gray.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
    return 255 - a if a.mean() > 127 else a


def predict_files(checkpoint: str | Path, paths: list[str], top: int = 3) -> list[dict]:
    """Classify image files: for each, its path, the class, its probability and the ``top``
    classes with theirs.

    Raises:
        CheckpointError: the checkpoint cannot be used.
        ValueError: an image is refused (see load_image), ``top`` is out of range, or the
            model's probabilities are not finite.
    """
    from gpucnn.inference import load

    model = load(checkpoint)
    return _predict(model, paths, top)


def _predict(model, paths: list[str], top: int) -> list[dict]:
    if not 1 <= top <= len(model.classes):
        raise ValueError(f"top must be between 1 and {len(model.classes)}, got {top}")
    probs = model.predict_proba(model.read(paths))
    out = []
    for path, p in zip(paths, probs, strict=True):
        order = np.argsort(-p, kind="stable")[:top]
        out.append(
            {
                "path": str(path),
                "class": model.classes[order[0]],
                "probability": float(p[order[0]]),
                "top": [(model.classes[i], float(p[i])) for i in order],
            }
        )
    return out


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def main(argv: list[str] | None = None, prog: str = "python -m gpucnn.predict") -> int:
    # the command lines' exit statuses and signal handling
    from gpucnn.cli.run import EXIT_STATUS, run_cli

    ap = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "images", nargs="+", help="image files (PNG, JPEG, BMP, GIF, WebP, TIFF), of any size"
    )
    ap.add_argument("--checkpoint", required=True, help="a checkpoint .npz from a training run")
    ap.add_argument(
        "--top", type=_positive_int, default=3, help="how many classes to list (default 3)"
    )
    args = ap.parse_args(argv)

    def body() -> int:
        from gpucnn.inference import load
        from gpucnn.train.errors import CheckpointError

        try:
            model = load(args.checkpoint)
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if args.top > len(model.classes):
            ap.error(f"argument --top: this model has {len(model.classes)} classes, got {args.top}")
        try:
            results = _predict(model, args.images, args.top)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for r in results:
            others = ", ".join(f"{c} {p:.3f}" for c, p in r["top"])
            print(f"{r['path']}: {r['class']} (p={r['probability']:.3f})  top: {others}")
        return 0

    return run_cli(body, interrupted="interrupted")


if __name__ == "__main__":
    sys.exit(main())
