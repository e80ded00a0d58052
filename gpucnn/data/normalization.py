"""Per-channel normalisation: what turns uint8 pixels into what a model takes.

    x[n, c] = (pixel[n, c] / 255 - mean[c]) / std[c]

in float32, each operation rounded on its own: ``x = pixel * float32(1/255)``, then
``x -= mean[c]``, then ``x *= float32(1) / float32(std[c])``. One channel's constants are
scalars (MNIST's 0.1307 and 0.3081), so a grayscale run computes the bits it always did; a
colour run has one mean and one std per channel (CIFAR-10's, or those computed from a folder's
training split by :meth:`Normalization.of`). Pretrained weights bring their own (ImageNet's):
build a ``Normalization(mean, std)`` from them and hand it to the DataLoader, the Predictor and
the ONNX export in place of the computed one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SCALE = np.float32(1.0 / 255.0)


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std of pixels scaled to [0, 1].

    Args:
        mean: one value per channel (a single value stands for every channel).
        std: likewise; each > 0.

    Raises:
        ValueError: lengths that differ, a std that is not > 0, or a value that is not finite.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        mean = _floats("mean", self.mean)
        std = _floats("std", self.std)
        if len(mean) != len(std):
            raise ValueError(
                f"Normalization: {len(mean)} means but {len(std)} stds; give one of each per "
                "channel"
            )
        if not all(s > 0 for s in std):
            raise ValueError(f"Normalization: every std must be > 0, got {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def uniform(self) -> bool:
        """Whether every channel has the same constants (then scalars stand for them)."""
        return len(set(self.mean)) == 1 and len(set(self.std)) == 1

    def for_channels(self, channels: int) -> Normalization:
        """These constants for images of ``channels`` channels: a uniform normalisation
        stretches to any count; a per-channel one must match it.

        Raises:
            ValueError: per-channel constants for another number of channels.
        """
        if channels == self.channels:
            return self
        if self.uniform:
            return Normalization(self.mean[:1] * channels, self.std[:1] * channels)
        raise ValueError(
            f"normalisation of {self.channels} channels (mean {self.mean}) for images of "
            f"{channels} channels"
        )

    def constants(self, xp: Any = np) -> tuple[Any, Any]:
        """(mean, 1 / std) as ``x -= mean; x *= inv_std`` takes them: float32 scalars when
        uniform, else float32 (1, C, 1, 1) arrays of the array module ``xp``."""
        mean = np.asarray(self.mean, np.float32)
        inv_std = np.float32(1.0) / np.asarray(self.std, np.float32)
        if self.uniform:
            return mean[0], inv_std[0]
        return xp.asarray(mean.reshape(1, -1, 1, 1)), xp.asarray(inv_std.reshape(1, -1, 1, 1))

    def apply(self, x: Any, constants: tuple[Any, Any] | None = None) -> Any:
        """Normalise float32 images scaled to [0, 1], in place. Shape: (N, C, H, W).

        ``constants``: :meth:`constants` made once for x's device (else made here)."""
        if x.shape[1] != self.channels and not self.uniform:
            raise ValueError(
                f"normalisation of {self.channels} channels for images of shape {tuple(x.shape)}"
            )
        if constants is None:
            from gpucnn.backend import backend_of

            constants = self.constants(backend_of(x).xp)
        mean, inv_std = constants
        x -= mean
        x *= inv_std
        return x

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready: {"mean": [...], "std": [...]}, one value per channel."""
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        """From :meth:`to_dict`'s form, or the scalar form ({"mean": 0.1307, "std": 0.3081})
        runs and checkpoints of one channel recorded."""
        if not isinstance(d, dict) or "mean" not in d or "std" not in d:
            raise ValueError(f"a normalisation needs 'mean' and 'std', got {d!r}")
        return cls(_as_tuple(d["mean"]), _as_tuple(d["std"]))

    @classmethod
    def of(cls, images: Any, indices: Any = None, chunk: int | None = None) -> Normalization:
        """The per-channel mean and std of uint8 images scaled to [0, 1], over the rows
        ``indices`` (default: all), read ``chunk`` images at a time (default: about 2 M
        pixels; a memory-mapped cache is never read whole into memory). Sums are float64.

        Shape: images uint8 (N, C, H, W).

        Raises:
            ValueError: no images, or images of a single shade (std 0).
        """
        n = len(images) if indices is None else len(indices)
        if n == 0:
            raise ValueError("Normalization.of: no images to compute a mean and std from")
        c = images.shape[1]
        if chunk is None:
            chunk = max(1, (1 << 21) // int(np.prod(images.shape[1:])))
        total = np.zeros(c)
        squares = np.zeros(c)
        order = np.arange(len(images)) if indices is None else np.sort(np.asarray(indices))
        from gpucnn.data.cache import release_pages

        for i in range(0, n, chunk):
            block = np.asarray(images[order[i : i + chunk]], dtype=np.float64)
            release_pages(images)
            total += block.sum(axis=(0, 2, 3))
            squares += np.square(block, out=block).sum(axis=(0, 2, 3))
        count = n * images.shape[2] * images.shape[3]
        mean = total / count / 255.0
        var = np.maximum(squares / count / 255.0**2 - mean**2, 0.0)
        std = np.sqrt(var)
        if not (std > 0).all():
            raise ValueError(
                "Normalization.of: the training images are of a single shade in some channel "
                f"(std {std.round(6).tolist()}); nothing to learn from"
            )
        return cls(tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std))

    def __str__(self) -> str:
        if self.uniform and self.channels == 1:
            return f"mean {self.mean[0]:g}, std {self.std[0]:g}"
        mean = ", ".join(f"{m:.4f}" for m in self.mean)
        std = ", ".join(f"{s:.4f}" for s in self.std)
        return f"mean ({mean}), std ({std})"


def _as_tuple(value: Any) -> tuple[float, ...]:
    if isinstance(value, (int, float, np.floating, np.integer)):
        return (float(value),)
    return tuple(value)


def _floats(name: str, values: Any) -> tuple[float, ...]:
    values = _as_tuple(values) if not isinstance(values, Sequence) else tuple(values)
    if not values:
        raise ValueError(f"Normalization: {name} needs at least one value")
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"Normalization: {name} holds {v!r}, not a number") from None
        if not math.isfinite(f):
            raise ValueError(f"Normalization: {name} holds {f}, not a finite number")
        out.append(f)
    return tuple(out)


def as_normalization(mean: Any, std: Any = None) -> Normalization:
    """A Normalization from one (a Normalization itself), or from a mean and a std given as
    scalars or per-channel sequences."""
    if isinstance(mean, Normalization):
        return mean
    return Normalization(_as_tuple(mean), _as_tuple(std))
