"""Datasets as sources: every kind yields the same :class:`Dataset`.

A kind (the IDX registry, the CIFAR-10 binary archive, a folder of images) is one module of
gpucnn.data with ``open_dataset(name, root, mirrors, download, **options) -> Dataset`` and
``download(name, root, mirrors, **options)``; :func:`kind_of` picks it from the name or path,
so a recipe asks for a dataset by name or path and never branches on its kind.

A Dataset holds uint8 (N, C, H, W) images and int64 labels per split (``parts``: "train",
"test", and "val" where the source has one), the class names, the per-channel normalisation
(None: computed from the training split), how its images were prepared, and the facts a run
records (digests, a folder's file list). :meth:`Dataset.split` makes the run's train, val and
test parts from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpucnn.data.errors import DataError
from gpucnn.data.normalization import Normalization

KINDS = ("idx", "cifar10", "folder")


@dataclass
class Part:
    """One split: ``labels[i]`` is the class of ``images[indices[i]]`` (of ``images[i]``
    when ``indices`` is None). ``images`` may be a memory map shared by several parts."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self) -> np.ndarray:
        """The rows of ``images`` this part holds, in order."""
        return np.arange(len(self.labels)) if self.indices is None else self.indices

    def take(self, which: np.ndarray) -> Part:
        """The part of items ``which`` (positions in this part), sharing ``images``."""
        which = np.asarray(which, dtype=np.int64)
        return Part(self.images, self.labels[which], self.rows()[which])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) in memory: the part's own rows read out."""
        if self.indices is None:
            return np.asarray(self.images), self.labels
        return np.asarray(self.images[self.indices]), self.labels


@dataclass
class Dataset:
    """What every kind of dataset yields (see the module docstring).

    Attributes:
        name: as the user gave it: a registry name, or a folder's absolute path.
        kind: "idx", "cifar10" or "folder".
        classes: class names, index i for label i.
        parts: "train", "test" and, where the source has one, "val".
        normalization: the per-channel mean and std, or None: computed from the training
            split (:meth:`normalization_for`).
        stratified: a split held out of the training images keeps each class's share
            (folders), or is the article's seeded permutation (the registry's datasets, so
            their runs keep their splits).
        prepare: how the images were decoded and resized (folders), else None.
        facts: what a run records about the data (digests, the folder's file list).
    """

    name: str
    kind: str
    classes: tuple[str, ...]
    parts: dict[str, Part]
    normalization: Normalization | None = None
    stratified: bool = False
    prepare: dict[str, Any] | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image, (C, H, W)."""
        c, h, w = self.parts["train"].images.shape[1:]
        return int(c), int(h), int(w)

    def split(
        self,
        val_fraction: float,
        seed: int = 0,
        limit: int | None = None,
        test_fraction: float = 0.2,
    ) -> dict[str, Part]:
        """The run's train, val and test parts.

        ``limit`` keeps the first ``limit`` training images (folders: the first of a seeded
        order); then, where the source has no such part, ``test_fraction`` of them are held
        out for the test set and ``val_fraction`` for validation: per class when
        ``stratified``, else the article's split (a permutation from ``seed``, the last
        ``round(val_fraction * N)`` items for validation).

        Raises:
            DataError: a part would be empty.
        """
        from gpucnn.data.loader import split_order

        pool = self.parts["train"]
        if limit is not None:
            if not 2 <= limit <= len(pool):
                raise DataError(
                    f"limit must be between 2 and {len(pool)} (the training images of "
                    f"{self.name}), got {limit}"
                )
            head = np.arange(limit)
            if self.stratified:
                head = np.sort(np.random.default_rng([seed, 1]).permutation(len(pool))[:limit])
            pool = pool.take(head)
        out: dict[str, Part] = {}
        if self.stratified:
            fractions = {
                "test": 0.0 if "test" in self.parts else test_fraction,
                "val": 0.0 if "val" in self.parts else val_fraction,
            }
            held = stratified_split(pool.labels, fractions, seed)
            out["train"] = pool.take(held["train"])
            for name in ("val", "test"):
                out[name] = self.parts[name] if name in self.parts else pool.take(held[name])
        else:
            tr, va = split_order(len(pool), val_fraction, seed)
            out["train"], out["val"] = pool.take(tr), pool.take(va)
            out["test"] = self.parts["test"]
        for name in ("train", "val", "test"):
            if not len(out[name]):
                raise DataError(
                    f"{self.name}: the {name} split holds no image ({len(pool)} training "
                    f"images in {len(self.classes)} classes; val fraction {val_fraction}, "
                    f"test fraction {test_fraction}): add images or change the fractions"
                )
        return out

    def normalization_for(self, train: Part) -> Normalization:
        """The dataset's normalisation, or the per-channel mean and std of ``train``."""
        if self.normalization is not None:
            return self.normalization.for_channels(self.shape[0])
        return Normalization.of(train.images, train.indices)

    def info(self, normalization: Normalization | None = None) -> dict[str, Any]:
        """What a model trained on this data needs to take new images (saved in the run's
        config and checkpoint as ``data``): kind, classes, image shape, normalisation and
        preparation."""
        norm = normalization or self.normalization
        return {
            "kind": self.kind,
            "classes": list(self.classes),
            "shape": list(self.shape),
            "normalization": norm.to_dict() if norm is not None else None,
            "prepare": self.prepare,
        }


def stratified_split(
    labels: np.ndarray, fractions: dict[str, float], seed: int
) -> dict[str, np.ndarray]:
    """Positions of ``labels`` for each held-out part and "train": in every class (in order
    of its label), a permutation from ``seed`` gives the first ``round(f * n_c)`` items to
    each part of ``fractions`` (in its order), keeping at least one for training.

    Returns:
        ``{"train": positions}`` and one entry ``{part: positions}`` per part of
        ``fractions``, each sorted.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("train", *fractions)}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for name, f in fractions.items():
            n = min(int(round(f * len(members))), len(members) - start - 1)
            n = max(n, 0)
            out[name].append(members[start : start + n])
            start += n
        out["train"].append(members[start:])
    return {k: np.sort(np.concatenate(v)) if v else np.zeros(0, np.int64) for k, v in out.items()}


def is_path(name: str) -> bool:
    """Whether a dataset name is a folder's path rather than a registry name: it names an
    existing folder, or looks like a path (a separator, or a leading '.' or '~')."""
    return os.sep in name or "/" in name or name.startswith((".", "~")) or os.path.isdir(name)


def kind_of(name: str) -> str:
    """ "idx", "cifar10" or "folder" for a dataset name or path.

    Raises:
        ValueError: neither a registered name nor a path.
    """
    from gpucnn.data.registry import DATASETS

    if name in DATASETS:
        return "idx"
    if name == "cifar10":
        return "cifar10"
    if is_path(name):
        return "folder"
    raise ValueError(
        f"unknown dataset {name!r}; choose one of {', '.join(names())}, or give the path of "
        "a folder of images (one subfolder per class)"
    )


def display_name(name: str) -> str:
    """A dataset's name for run names and titles: a registry name as it is; a folder by its
    own name, kept to letters, digits, '-' and '_' (at most 40)."""
    if kind_of(name) != "folder":
        return name
    base = os.path.basename(os.path.normpath(os.path.expanduser(name)))
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in base)[:40] or "folder"


def names() -> list[str]:
    """The datasets known by name."""
    from gpucnn.data.registry import DATASETS

    return sorted([*DATASETS, "cifar10"])


def module_of(name: str) -> Any:
    """The module of the dataset's kind (its ``open`` and ``download``)."""
    kind = kind_of(name)
    if kind == "idx":
        from gpucnn.data import idx_source as module
    elif kind == "cifar10":
        from gpucnn.data import cifar as module
    else:
        from gpucnn.data import folder as module
    return module
