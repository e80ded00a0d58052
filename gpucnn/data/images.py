"""Image files to uint8 arrays, one rule for training and prediction (Pillow, imported on use).

An image is opened (refused above Pillow's pixel limit, ``PIL.Image.MAX_IMAGE_PIXELS``, before
its pixels are decoded), turned upright by its EXIF orientation, converted to RGB (``"RGB"``,
3 channels) or grayscale (``"L"``, 1 channel; a transparent image is taken as Pillow converts
it, as torchvision's ImageFolder does), then resized: its shorter side to S (bilinear, with
Pillow's antialiasing when shrinking), then the centre S×S crop. An image already S×S is left
as it is, pixel for pixel.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's default Image.MAX_IMAGE_PIXELS
RULE = "shorter side to S (bilinear, antialiased), then the centre S×S crop; EXIF orientation"


class ImageError(ValueError):
    """An image file that cannot be used: unreadable, truncated, corrupt or too large."""


def pil() -> Any:
    """Pillow's Image module (the "images" extra), or a clear ImportError."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("reading images needs Pillow: pip install 'gpucnn[images]'") from exc
    return Image


def pixel_limit() -> int:
    return pil().MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS


def open_image(path: str | Path) -> Any:
    """The image at ``path``, its header read and its size checked (pixels not decoded yet).

    Raises:
        ImageError: not an image Pillow can read, or more pixels than the limit.
    """
    Image = pil()  # noqa: N806 - Pillow's module name
    from PIL import UnidentifiedImageError

    limit = pixel_limit()
    too_big = f"larger than the limit of {limit:,} pixels (PIL.Image.MAX_IMAGE_PIXELS)"
    try:
        with warnings.catch_warnings():
            # Pillow only warns between the limit and twice it; we refuse there as well
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: image is {too_big} ({exc})") from exc
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from exc
    w, h = img.size
    if w * h > limit:
        img.close()
        raise ImageError(f"{path}: image of {w}x{h} pixels is {too_big}")
    return img


def header(path: str | Path) -> tuple[int, int, str]:
    """(width, height, mode) from the file's header, EXIF rotation applied to the size.

    Raises:
        ImageError: see :func:`open_image`.
    """
    with open_image(path) as img:
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - a broken EXIF block: the pixels may still be fine
            orientation = 1
        if orientation in (5, 6, 7, 8):  # a quarter turn swaps the sides
            w, h = h, w
        return w, h, img.mode


def is_gray(mode: str) -> bool:
    return mode in GRAY_MODES


def prepare(img: Any, size: int, channels: int) -> np.ndarray:
    """An opened image as uint8 (channels, size, size) by the module's rule.

    Raises:
        ImageError: the pixels cannot be decoded (a truncated or corrupt file).
    """
    Image = pil()  # noqa: N806
    from PIL import ImageOps

    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        img = img.convert("L" if channels == 1 else "RGB")
        w, h = img.size
        if (w, h) != (size, size):
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            img = img.crop((left, top, left + size, top + size))
        a = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        name = getattr(img, "filename", "") or "image"
        raise ImageError(f"{name}: cannot be decoded ({exc})") from exc
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def load(path: str | Path, size: int, channels: int) -> np.ndarray:
    """The image file at ``path`` as uint8 (channels, size, size) by the module's rule.

    Raises:
        ImageError: unreadable, truncated, corrupt or too large (naming the path).
    """
    img = open_image(path)
    try:
        return prepare(img, size, channels)
    except ImageError as exc:
        raise ImageError(f"{path}: {str(exc).split(': ', 1)[-1]}") from exc
    finally:
        img.close()
