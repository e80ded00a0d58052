"""Batch augmentation on the batch's own device, seeded and composable.

Transforms act on float images (N, C, H, W) scaled to [0, 1] (before normalisation, so the
background that moves into view is 0, black) and take the generator that decides their random
parameters: ``x = transform(x, rng)``.

Geometric transforms use one inverse mapping: every output pixel p looks up the source point

    q = A^{-1} (p - c - t) + c,   A = s * R(theta)

(c the image centre, t the shift, s the scale, theta the angle) and reads it with bilinear
interpolation, zero outside the image. theta = 0, s = 1, t = 0 gives q = p exactly: the identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gpucnn.backend import backend_of


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any, rng: np.random.Generator) -> Any:
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability p. (It turns digits into non-digits: the
    article lists it, but the MNIST recipe leaves it out.)"""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p!r}")
        self.p = p

    def __call__(self, x: Any, rng: np.random.Generator) -> Any:
        xp = backend_of(x).xp
        flip = xp.asarray(rng.random(x.shape[0]) < self.p)[:, None, None, None]
        return xp.where(flip, x[..., ::-1], x)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomAffine:
    """Random rotation, shift and scale per image, bilinear, zero fill.

    Args:
        degrees: angle drawn uniformly from [-degrees, degrees].
        translate: (fx, fy): shift drawn uniformly from [-fx*W, fx*W] (and likewise for y).
        scale: (lo, hi): zoom factor drawn uniformly from [lo, hi].

    Shape: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(
        self,
        degrees: float = 0.0,
        translate: tuple[float, float] = (0.0, 0.0),
        scale: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        if degrees < 0:
            raise ValueError(f"RandomAffine: degrees must be >= 0, got {degrees!r}")
        if not all(0.0 <= f <= 1.0 for f in translate):
            raise ValueError(
                f"RandomAffine: translate fractions must be in [0, 1], got {translate}"
            )
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"RandomAffine: scale must be (lo, hi) with 0 < lo <= hi, got {scale}")
        self.degrees, self.translate, self.scale = float(degrees), tuple(translate), tuple(scale)

    def sample(self, n: int, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """Per-image (theta radians, tx, ty pixels, s), drawn in a fixed order (reproducible)."""
        theta = np.deg2rad(rng.uniform(-self.degrees, self.degrees, n))
        tx = rng.uniform(-self.translate[0] * w, self.translate[0] * w, n)
        ty = rng.uniform(-self.translate[1] * h, self.translate[1] * h, n)
        s = rng.uniform(self.scale[0], self.scale[1], n)
        return theta, tx, ty, s

    def __call__(self, x: Any, rng: np.random.Generator) -> Any:
        n, _, h, w = x.shape
        theta, tx, ty, s = self.sample(n, h, w, rng)
        return affine(x, theta, tx, ty, s)

    def __repr__(self) -> str:
        return (
            f"RandomAffine(degrees={self.degrees}, translate={self.translate}, scale={self.scale})"
        )


class RandomRotation(RandomAffine):
    """Rotate each image by an angle drawn from [-degrees, degrees] (bilinear, zero fill)."""

    def __init__(self, degrees: float) -> None:
        super().__init__(degrees=degrees)


class RandomCrop:
    """A random crop of the image padded with ``padding`` zero pixels on each side, back to
    its own size (torchvision's ``RandomCrop(size, padding)``): a shift of each image by whole
    pixels drawn uniformly from [-padding, padding] in x and y, black moving into view.

    Args:
        padding: pixels; None: an eighth of the image's width (4 for 32×32), at least 1.

    Shape: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, padding: int | None = None) -> None:
        if padding is not None and (not isinstance(padding, int) or padding < 0):
            raise ValueError(f"RandomCrop: padding must be a whole number >= 0, got {padding!r}")
        self.padding = padding

    def __call__(self, x: Any, rng: np.random.Generator) -> Any:
        n, _, h, w = x.shape
        p = self.padding if self.padding is not None else max(1, round(w / 8))
        tx = rng.integers(-p, p + 1, n).astype(np.float64)
        ty = rng.integers(-p, p + 1, n).astype(np.float64)
        # a whole-pixel shift samples exactly: q = p - t lands on pixel centres
        return affine(x, np.zeros(n), tx, ty, np.ones(n))

    def __repr__(self) -> str:
        return f"RandomCrop(padding={self.padding if self.padding is not None else 'width/8'})"


def affine(x: Any, theta: Any, tx: Any, ty: Any, s: Any) -> Any:
    """Warp each image n by rotation theta[n], scale s[n] and shift (tx[n], ty[n]) pixels.

    The per-image inverse matrices are formed on the host; the sampling runs on the batch's
    device (the backend's ``affine_warp`` kernel).

    Shape: (N, C, H, W) -> (N, C, H, W); the parameters are (N,) host arrays.
    """
    be = backend_of(x)
    # inverse of s*R(theta): R(-theta)/s, as 2×2 entries per image
    cos, sin = np.cos(theta) / s, np.sin(theta) / s
    inv = be.xp.asarray(np.stack([cos, sin, -sin, cos], axis=1).astype(np.float32))  # (N, 4)
    shift = be.xp.asarray(np.stack([tx, ty], axis=1).astype(np.float32))  # (N, 2)
    return be.kernels.affine_warp(x, inv, shift)


def default_recipe() -> Compose:
    """The augmentation for digits: small rotations and shifts (no flips)."""
    return Compose([RandomAffine(degrees=10.0, translate=(0.1, 0.1))])


def photo_recipe() -> Compose:
    """The augmentation for photos ("crop-flip"): a horizontal flip with probability 0.5, then
    a random crop of the image padded by an eighth of its width (4 pixels for 32×32), as the
    standard CIFAR-10 recipe. Never a default: it turns digits into non-digits."""
    return Compose([RandomHorizontalFlip(0.5), RandomCrop()])


RECIPES = {"default": default_recipe, "crop-flip": photo_recipe}


def parse_recipe(spec: str) -> Compose | None:
    """Build a recipe from a command-line string: "none", a named recipe ("default": digits,
    rotate 10 and shift 0.1; "crop-flip": photos, flip and random crop), or comma-separated
    items among "flip", "crop" (padding: an eighth of the width) or "crop=PIXELS",
    "rotate=DEG", "shift=FRAC", "scale=LO:HI"."""
    spec = spec.strip().lower()
    if spec in ("", "none", "off"):
        return None
    if spec in RECIPES:
        return RECIPES[spec]()
    transforms: list[Any] = []
    degrees, shift, scale = 0.0, 0.0, (1.0, 1.0)
    for item in spec.split(","):
        key, _, value = item.strip().partition("=")
        try:
            if key == "flip":
                transforms.append(RandomHorizontalFlip(float(value) if value else 0.5))
            elif key == "crop":
                transforms.append(RandomCrop(int(value) if value else None))
            elif key == "rotate":
                degrees = float(value)
            elif key == "shift":
                shift = float(value)
            elif key == "scale":
                lo, _, hi = value.partition(":")
                scale = (float(lo), float(hi or lo))
            else:
                raise ValueError(f"unknown item {key!r}")
        except ValueError as exc:
            raise ValueError(
                f"augmentation {spec!r}: {exc}; expected 'none', 'default', 'crop-flip' or "
                "items like 'rotate=10,shift=0.1,scale=0.9:1.1,flip,crop=4'"
            ) from exc
    if degrees or shift or scale != (1.0, 1.0):
        transforms.append(RandomAffine(degrees, (shift, shift), scale))
    return Compose(transforms) if transforms else None
