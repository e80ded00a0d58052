"""Batches for training: seeded split, seeded per-epoch shuffling, normalisation, augmentation.

The whole dataset stays as uint8 on its device (on a GPU: resident in device memory); each
batch is gathered, scaled to [0, 1], augmented and normalised on that same device.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from gpucnn.backend import Backend, get_backend


def train_val_split(
    images: np.ndarray, labels: np.ndarray, val_fraction: float = 0.2, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The article's seeded 80/20 split: a permutation from ``seed``, the last
    ``round(val_fraction * N)`` items for validation.

    Returns:
        ((train_images, train_labels), (val_images, val_labels)).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"train_val_split: val_fraction must be in [0, 1), got {val_fraction!r}")
    if len(images) != len(labels):
        raise ValueError(f"train_val_split: {len(images)} images but {len(labels)} labels")
    n = len(images)
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    tr, va = order[: n - n_val], order[n - n_val :]
    return (images[tr], labels[tr]), (images[va], labels[va])


def normalize(images: Any, mean: float, std: float, augment: Any = None, rng: Any = None) -> Any:
    """What a model takes, from uint8 pixels, on the images' own device.

    x = (pixel / 255 - mean) / std, in float32; ``augment(x, rng)`` (when given) transforms the
    [0, 1] images before they are normalised.

    Shape: (N, H, W) or (N, C, H, W) uint8 -> (N, C, H, W) float32 (C = 1 for (N, H, W)).
    """
    x = images.astype(np.float32) * np.float32(1.0 / 255.0)
    if x.ndim == 3:
        x = x[:, None]
    if augment is not None:
        x = augment(x, rng)
    x -= np.float32(mean)
    x *= np.float32(1.0) / np.float32(std)
    return x


class DataLoader:
    """Iterate over (x, y) batches: x float32 (B, 1, H, W) normalised, y int64 (B,).

    Args:
        images: uint8 (N, H, W) or (N, C, H, W).
        labels: integer (N,).
        batch_size: B.
        shuffle: a new seeded order each epoch (epoch e uses the generator seeded by
            (seed, e), so a run resumed at epoch e sees the same batches).
        seed: base seed for shuffling and augmentation.
        mean, std: normalisation x = (pixel / 255 - mean) / std.
        augment: a transform ``f(x, rng)`` on [0, 1] images, or None.
        drop_last: drop the last partial batch (else it is yielded, smaller).
        limit: use only the first ``limit`` items (quick runs).
        device: "cpu", "cuda", "auto" or a Backend (a run passes the one it resolved); the
            dataset is moved there once.
    """

    def __init__(
        self,
        images: Any,
        labels: Any,
        batch_size: int = 64,
        shuffle: bool = True,
        seed: int = 0,
        mean: float = 0.0,
        std: float = 1.0,
        augment: Any = None,
        drop_last: bool = False,
        limit: int | None = None,
        device: str | Backend = "cpu",
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"DataLoader: {len(images)} images but {len(labels)} labels")
        if images.ndim not in (3, 4) or images.dtype != np.uint8:
            raise ValueError(
                f"DataLoader: expected uint8 images (N, H, W) or (N, C, H, W), "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        if not np.issubdtype(np.asarray(labels[:1]).dtype, np.integer):
            raise ValueError(f"DataLoader: labels must be integers, got {labels.dtype}")
        if batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        if std <= 0:
            raise ValueError(f"DataLoader: std must be > 0, got {std}")
        if limit is not None:
            if limit < 1:
                raise ValueError(f"DataLoader: limit must be >= 1, got {limit}")
            images, labels = images[:limit], labels[:limit]
        if images.ndim == 3:
            images = images[:, None]
        self.backend = get_backend(device)
        self.images = self.backend.asarray(images)  # uint8, moved once
        self.labels = self.backend.asarray(labels).astype(np.int64, copy=False)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.mean, self.std = np.float32(mean), np.float32(std)
        self.augment, self.drop_last = augment, drop_last
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration reproduces."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        xp = self.backend.xp
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.labels)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        order = xp.asarray(order)
        self.epoch += 1
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            yield (
                normalize(self.images[idx], self.mean, self.std, self.augment, rng),
                self.labels[idx],
            )
