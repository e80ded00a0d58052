"""Folders of real images written by the tests: MNIST test digits as PNG and JPEG files, as a
user's own photos would arrive (one subfolder per class, mixed sizes and formats, in colour)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# one colour per class: a digit's strokes are tinted with its class's colour on black
TINTS = np.array(
    [
        (255, 64, 64),
        (64, 255, 64),
        (64, 96, 255),
        (255, 255, 64),
        (255, 64, 255),
        (64, 255, 255),
        (255, 160, 32),
        (160, 64, 255),
        (255, 255, 255),
        (128, 255, 160),
    ],
    dtype=np.float32,
)
CLASSES = [f"digit-{d}" for d in range(10)]


def tinted(digit: np.ndarray, label: int) -> np.ndarray:
    """A 28×28 digit as an RGB image (H, W, 3) of its class's colour."""
    return (digit[..., None].astype(np.float32) / 255 * TINTS[label]).round().astype(np.uint8)


def write_digits(
    root: Path,
    images: np.ndarray,
    labels: np.ndarray,
    colour: bool = False,
    mixed: bool = False,
    classes: list[str] = CLASSES,
) -> list[Path]:
    """Write each digit as ``root/<class>/<index>.<ext>``; returns the paths in index order.

    Args:
        colour: tint each digit with its class's colour (RGB files), else grayscale PNG.
        mixed: every other image a JPEG (quality 95), and every third resized to 42×42 or
            56×56 (bilinear): the sizes and formats of a real collection.
    """
    from PIL import Image

    paths = []
    for i, (digit, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(tinted(digit, int(label)) if colour else digit)
        ext = "png"
        if mixed:
            if i % 3 == 1:
                img = img.resize((42, 42) if i % 2 else (56, 56), Image.Resampling.BILINEAR)
            if i % 2:
                ext = "jpg"
        path = folder / f"{i:05d}.{ext}"
        img.save(path, quality=95) if ext == "jpg" else img.save(path)
        paths.append(path)
    return paths


def random_folder(root: Path, n_per_class: int = 4, classes: int = 3, size: int = 12) -> Path:
    """A small folder of random RGB PNG images, ``classes`` classes of ``n_per_class``."""
    from PIL import Image

    g = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            a = g.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(a).save(folder / f"{i}.png")
    return root
