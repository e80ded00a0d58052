"""Datasets in the MNIST IDX format: verified download, parsing, loaders and augmentation.

images, labels = gpucnn.data.load("mnist", split="train")   # uint8 (N, 28, 28), int64 (N,)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from gpucnn.data import idx
from gpucnn.data.augment import (
    Compose,
    RandomAffine,
    RandomHorizontalFlip,
    RandomRotation,
    default_recipe,
    parse_recipe,
)
from gpucnn.data.errors import ChecksumError, DataError, DatasetFormatError, DownloadError
from gpucnn.data.fetch import RetryPolicy, default_root, download, verify_local
from gpucnn.data.loader import DataLoader, normalize, train_val_split
from gpucnn.data.registry import DATASETS, DatasetSpec, get_spec

SPLITS = ("train", "test")
_fetch = download  # `load` takes a flag named download


def load(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a verified split of a dataset.

    Args:
        name: "mnist", "fashion-mnist" or "kmnist".
        split: "train" or "test".
        root: cache folder (see :func:`download`).
        download: fetch what is missing or corrupt; False only verifies what is on disk.
        mirrors: URL prefixes to try instead of the registry's.

    Returns:
        (images uint8 (N, H, W), labels int64 (N,)).

    Raises:
        DataError (DownloadError, ChecksumError, DatasetFormatError): nothing unverified is
        ever returned.
    """
    spec = get_spec(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    if download:
        paths = _fetch(name, root, mirrors)
    else:
        paths = verify_local(name, root, keys=(f"{split}_images", f"{split}_labels"))
    images = idx.read(paths[f"{split}_images"], spec.files[f"{split}_images"].shape)
    labels = idx.read(paths[f"{split}_labels"], spec.files[f"{split}_labels"].shape)
    if labels.size and int(labels.max()) >= len(spec.classes):
        raise DatasetFormatError(
            f"{paths[f'{split}_labels']}: label {int(labels.max())} outside "
            f"[0, {len(spec.classes)})"
        )
    return images, labels.astype(np.int64)


__all__ = [
    "DATASETS",
    "ChecksumError",
    "Compose",
    "DataError",
    "DataLoader",
    "DatasetFormatError",
    "DatasetSpec",
    "DownloadError",
    "RandomAffine",
    "RandomHorizontalFlip",
    "RandomRotation",
    "RetryPolicy",
    "default_recipe",
    "default_root",
    "download",
    "get_spec",
    "idx",
    "load",
    "normalize",
    "parse_recipe",
    "train_val_split",
    "verify_local",
]
