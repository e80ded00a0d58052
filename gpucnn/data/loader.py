"""Batches for training: seeded split, seeded per-epoch shuffling, normalisation, augmentation.

The whole dataset stays as uint8 on its device (on a GPU: resident in device memory); each
batch is gathered, scaled to [0, 1], augmented and normalised (per channel) on that same
device. On the CPU a memory-mapped dataset (an image folder's cache) stays on disk: a loader
given ``indices`` reads each batch's rows from the map and hands the pages back
(gpucnn.data.cache.release_pages), so a dataset larger than memory trains in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from gpucnn.backend import Backend, get_backend
from gpucnn.data.cache import release_pages
from gpucnn.data.normalization import Normalization, as_normalization


def split_order(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The article's seeded split of n items: (train positions, validation positions) from
    a permutation seeded by ``seed``, the last ``round(val_fraction * n)`` for validation."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"train_val_split: val_fraction must be in [0, 1), got {val_fraction!r}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    return order[: n - n_val], order[n - n_val :]


def train_val_split(
    images: np.ndarray, labels: np.ndarray, val_fraction: float = 0.2, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The article's seeded 80/20 split: a permutation from ``seed``, the last
    ``round(val_fraction * N)`` items for validation (:func:`split_order`).

    Returns:
        ((train_images, train_labels), (val_images, val_labels)).
    """
    if len(images) != len(labels):
        raise ValueError(f"train_val_split: {len(images)} images but {len(labels)} labels")
    tr, va = split_order(len(images), val_fraction, seed)
    return (images[tr], labels[tr]), (images[va], labels[va])


def normalize(images: Any, mean: Any, std: Any = None, augment: Any = None, rng: Any = None) -> Any:
    """What a model takes, from uint8 pixels, on the images' own device.

    x = (pixel / 255 - mean[c]) / std[c], in float32 (gpucnn.data.normalization); ``mean`` and
    ``std`` are scalars, one value per channel, or ``mean`` a Normalization (std then None).
    ``augment(x, rng)`` (when given) transforms the [0, 1] images before they are normalised.

    Shape: (N, H, W) or (N, C, H, W) uint8 -> (N, C, H, W) float32 (C = 1 for (N, H, W)).
    """
    x = images.astype(np.float32) * np.float32(1.0 / 255.0)
    if x.ndim == 3:
        x = x[:, None]
    if augment is not None:
        x = augment(x, rng)
    norm = as_normalization(mean, std)
    return norm.for_channels(x.shape[1]).apply(x)


class DataLoader:
    """Iterate over (x, y) batches: x float32 (B, C, H, W) normalised, y int64 (B,).

    Args:
        images: uint8 (N, H, W) or (N, C, H, W); on the CPU it may be memory-mapped.
        labels: integer (N,), or (len(indices),) with ``indices``.
        batch_size: B.
        shuffle: a new seeded order each epoch (epoch e uses the generator seeded by
            (seed, e), so a run resumed at epoch e sees the same batches).
        seed: base seed for shuffling and augmentation.
        mean, std: normalisation x = (pixel / 255 - mean[c]) / std[c]: scalars, one value per
            channel, or ``mean`` a gpucnn.data.Normalization (std then None).
        augment: a transform ``f(x, rng)`` on [0, 1] images, or None.
        drop_last: drop the last partial batch (else it is yielded, smaller).
        limit: use only the first ``limit`` items (quick runs).
        device: "cpu", "cuda", "auto" or a Backend (a run passes the one it resolved); the
            dataset is moved there once.
        indices: the rows of ``images`` this loader serves (a split of a larger array), in
            order; None: every row. On the CPU the rows are read batch by batch from
            ``images`` (a memory map stays on disk); on a GPU they are gathered onto it once.
    """

    def __init__(
        self,
        images: Any,
        labels: Any,
        batch_size: int = 64,
        shuffle: bool = True,
        seed: int = 0,
        mean: Any = 0.0,
        std: Any = None,
        augment: Any = None,
        drop_last: bool = False,
        limit: int | None = None,
        device: str | Backend = "cpu",
        indices: Any = None,
    ) -> None:
        rows = len(images) if indices is None else len(indices)
        if rows != len(labels):
            what = "images" if indices is None else "indices"
            raise ValueError(f"DataLoader: {rows} {what} but {len(labels)} labels")
        if images.ndim not in (3, 4) or images.dtype != np.uint8:
            raise ValueError(
                f"DataLoader: expected uint8 images (N, H, W) or (N, C, H, W), "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        if not np.issubdtype(np.asarray(labels[:1]).dtype, np.integer):
            raise ValueError(f"DataLoader: labels must be integers, got {labels.dtype}")
        if batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        if std is None and not isinstance(mean, Normalization):
            std = 1.0
        if not isinstance(mean, Normalization) and np.any(np.asarray(std) <= 0):
            raise ValueError(f"DataLoader: std must be > 0, got {std}")
        channels = 1 if images.ndim == 3 else images.shape[1]
        try:
            self.normalization = as_normalization(mean, std).for_channels(channels)
        except ValueError as exc:
            raise ValueError(f"DataLoader: {exc}") from None
        if indices is not None:
            indices = np.asarray(indices, dtype=np.int64)
            inside = not len(indices) or 0 <= indices.min() <= indices.max() < len(images)
            if indices.ndim != 1 or not inside:
                raise ValueError(f"DataLoader: indices must be rows of the {len(images)} images")
        if limit is not None:
            if limit < 1:
                raise ValueError(f"DataLoader: limit must be >= 1, got {limit}")
            labels = labels[:limit]
            if indices is None:
                images = images[:limit]
            else:
                indices = indices[:limit]
        if images.ndim == 3:
            images = images[:, None]
        self.backend = get_backend(device)
        if indices is not None and not self.backend.host_memory:
            images, indices = np.asarray(images[indices]), None  # gathered onto the device once
        self.indices = indices
        self.images = self.backend.asarray(images)  # uint8, moved once (a memory map stays)
        self.labels = self.backend.asarray(labels).astype(np.int64, copy=False)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        norm = self.normalization
        self.mean, self.std = (
            (np.float32(norm.mean[0]), np.float32(norm.std[0]))
            if norm.uniform
            else (np.asarray(norm.mean, np.float32), np.asarray(norm.std, np.float32))
        )
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

    def gather(self, rows: Any) -> Any:
        """The uint8 images of loader rows ``rows`` (host int64 or device array)."""
        if self.indices is None:
            return self.images[rows]
        src = self.indices[np.asarray(rows)]
        batch = self.images[src]
        release_pages(self.images)
        return batch

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        xp = self.backend.xp
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.labels)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.indices is None:
            order = xp.asarray(order)
        self.epoch += 1
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            x = normalize(self.gather(idx), self.normalization, None, self.augment, rng)
            yield x, self.labels[idx]
