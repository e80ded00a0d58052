"""Datasets: the IDX registry (MNIST, Fashion-MNIST, KMNIST), CIFAR-10 from its binary archive,
and folders of a user's own images, each verified or decoded once, with loaders, per-channel
normalisation and augmentation.

images, labels = gpucnn.data.load("mnist", split="train")    # uint8 (N, 28, 28), int64 (N,)
images, labels = gpucnn.data.load("cifar10", split="test")   # uint8 (N, 3, 32, 32)
images, labels = gpucnn.data.load("photos/", split="train")  # uint8 (N, C, S, S)
ds = gpucnn.data.open_dataset("photos/")                      # every split, classes, facts
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpucnn.data import idx
from gpucnn.data.augment import (
    Compose,
    RandomAffine,
    RandomCrop,
    RandomHorizontalFlip,
    RandomRotation,
    default_recipe,
    parse_recipe,
)
from gpucnn.data.errors import ChecksumError, DataError, DatasetFormatError, DownloadError
from gpucnn.data.fetch import RetryPolicy, default_root, verify_local
from gpucnn.data.folder import ImageFolder
from gpucnn.data.loader import DataLoader, normalize, train_val_split
from gpucnn.data.normalization import Normalization
from gpucnn.data.registry import DATASETS, DatasetSpec, get_spec
from gpucnn.data.source import Dataset, Part, display_name, is_path, kind_of, module_of, names

SPLITS = ("train", "test")


def download(
    name: str,
    root: str | os.PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Make a dataset ready: fetch and verify what is missing or corrupt (the IDX files, the
    CIFAR-10 archive), or decode a folder of images into its cache.

    Args:
        name: "mnist", "fashion-mnist", "kmnist", "cifar10", or a folder's path.
        root: the data directory (default: GPUCNN_DATA_DIR, else ~/.cache/gpucnn).
        mirrors: URL prefixes to try instead of the registry's.
        options: the kind's own: for downloads ``timeout``, ``retry``, ``min_rate``,
            ``deadline`` (gpucnn.data.fetch.download); for a folder ``image_size``,
            ``channels``, ``skip_bad_images`` (gpucnn.data.folder).

    Returns:
        The local paths (IDX: keyed train_images, ...; CIFAR-10: by member; a folder: its
        cache).
    """
    return module_of(name).download(name, root, mirrors, **options)


def open_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    download: bool = True,
    **options: Any,
) -> Dataset:
    """Every split of a dataset with its classes, normalisation and facts (a
    gpucnn.data.source.Dataset), verified; ``options`` as :func:`download`'s for a folder."""
    return module_of(name).open_dataset(name, root, mirrors, download, **options)


def describe(name: str) -> dict[str, Any]:
    """What a model of a named dataset takes, without its data: classes, shape (C, H, W),
    normalisation (Dataset.info's form). A folder's needs the folder: open_dataset(...).info()."""
    module = module_of(name)
    if not hasattr(module, "describe"):
        raise ValueError(f"{name}: a folder's classes and shape come from its images")
    return module.describe(name)


def train_count(name: str) -> int | None:
    """Training images of a named dataset; None for a folder (known once it is scanned)."""
    module = module_of(name)
    return module.train_count(name) if hasattr(module, "train_count") else None


def load(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a verified split of a dataset.

    Args:
        name: "mnist", "fashion-mnist", "kmnist", "cifar10", or the path of a folder of
            class folders of images (gpucnn.data.folder).
        split: "train" or "test" (a folder without test/: "train" is every image).
        root: the data directory (see :func:`download`).
        download: fetch what is missing or corrupt; False only verifies what is on disk.
        mirrors: URL prefixes to try instead of the registry's.
        options: a folder's ``image_size``, ``channels``, ``skip_bad_images``.

    Returns:
        (images uint8 (N, H, W) for the IDX datasets, (N, C, H, W) for the others; labels
        int64 (N,)).

    Raises:
        DataError (DownloadError, ChecksumError, DatasetFormatError): nothing unverified is
        ever returned.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    ds = open_dataset(name, root, mirrors, download, splits=(split,), **options)
    if split not in ds.parts:
        raise DataError(f"{ds.name} has no {split} split on disk ({', '.join(ds.parts)})")
    images, labels = ds.parts[split].arrays()
    return (images[:, 0] if ds.kind == "idx" else images), labels


__all__ = [
    "DATASETS",
    "ChecksumError",
    "Compose",
    "DataError",
    "DataLoader",
    "Dataset",
    "DatasetFormatError",
    "DatasetSpec",
    "DownloadError",
    "ImageFolder",
    "Normalization",
    "Part",
    "RandomAffine",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomRotation",
    "RetryPolicy",
    "default_recipe",
    "default_root",
    "describe",
    "display_name",
    "download",
    "get_spec",
    "idx",
    "is_path",
    "kind_of",
    "load",
    "names",
    "normalize",
    "open_dataset",
    "parse_recipe",
    "train_count",
    "train_val_split",
    "verify_local",
]
