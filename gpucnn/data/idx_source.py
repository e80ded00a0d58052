"""The registry's IDX datasets (MNIST, Fashion-MNIST, KMNIST) as a gpucnn.data.source kind."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from gpucnn.data import fetch, idx
from gpucnn.data.errors import DatasetFormatError
from gpucnn.data.normalization import Normalization
from gpucnn.data.registry import get_spec
from gpucnn.data.source import Dataset, Part

SPLITS = ("train", "test")


def download(
    name: str,
    root: str | os.PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """The four verified files (gpucnn.data.fetch.download, which takes the ``kwargs``)."""
    return fetch.download(name, root, mirrors, **kwargs)


def read_split(name: str, split: str, paths: dict[str, Any]) -> tuple[Any, Any]:
    """(images uint8 (N, H, W), labels int64 (N,)) of one split from its verified files."""
    import numpy as np

    spec = get_spec(name)
    images = idx.read(paths[f"{split}_images"], spec.files[f"{split}_images"].shape)
    labels = idx.read(paths[f"{split}_labels"], spec.files[f"{split}_labels"].shape)
    if labels.size and int(labels.max()) >= len(spec.classes):
        raise DatasetFormatError(
            f"{paths[f'{split}_labels']}: label {int(labels.max())} outside "
            f"[0, {len(spec.classes)})"
        )
    return images, labels.astype(np.int64)


def open_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    download: bool = True,
    splits: Sequence[str] = SPLITS,
) -> Dataset:
    """The dataset's ``splits``, verified (fetched first with ``download``; else only the
    files of those splits are verified)."""
    spec = get_spec(name)
    keys = [f"{s}_{what}" for s in splits for what in ("images", "labels")]
    paths = (
        fetch.download(name, root, mirrors) if download else fetch.verify_local(name, root, keys)
    )
    parts = {}
    for split in splits:
        images, labels = read_split(name, split, paths)
        parts[split] = Part(images[:, None], labels)
    records = fetch.read_records(fetch.dataset_dir(spec.name, root))
    digests = {
        f.name: f.sha256 or records.get(f.name, {}).get("sha256") for f in spec.files.values()
    }
    return Dataset(
        name=name,
        kind="idx",
        classes=spec.classes,
        parts=parts,
        normalization=Normalization((spec.mean,), (spec.std,)),
        facts={"sha256": digests},
    )


def describe(name: str) -> dict[str, Any]:
    """What a model of this dataset takes, from the registry alone (Dataset.info's form)."""
    spec = get_spec(name)
    return {
        "kind": "idx",
        "classes": list(spec.classes),
        "shape": [1, *spec.files["test_images"].shape[1:]],
        "normalization": Normalization((spec.mean,), (spec.std,)).to_dict(),
        "prepare": None,
    }


def train_count(name: str) -> int:
    return get_spec(name).files["train_images"].shape[0]
