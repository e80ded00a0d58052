"""A folder of images as a dataset: one subfolder per class, decoded once into a cache.

    photos/cat/1.jpg, photos/dog/2.png, ...                 # split by gpucnn (seeded, per class)
    photos/train/cat/..., photos/test/cat/... [photos/val/]  # split on disk

Classes are the sorted subfolder names (of ``train/`` in the second layout). Hidden entries
(names starting with "." such as .DS_Store and .ipynb_checkpoints, and __MACOSX) are never
classes or images; files whose extension is not an image's (png, jpg, jpeg, bmp, gif, webp,
tif, tiff, any case) are ignored and counted in one line. Subfolders of a class folder are
walked too, following links, each folder once (a link loop ends).

The images are decoded once (gpucnn.data.images: RGB, or grayscale when every image is;
resized to the side S: the shorter side of the training images' most common size, at most
64, unless
``image_size`` says) into a uint8 (N, C, S, S) cache under the data directory
(``<data dir>/folders/<name>-<digest>/``, gpucnn.data.cache), keyed by the file list, each
file's size and modification time, and the options. A later run over the same files maps the
cache (it starts in seconds); a changed, added or removed file makes the next run decode again.

Bad input fails before training starts, naming what is wrong: a folder that does not exist,
no class folders, one class only, an empty class folder, an image that cannot be read (or is
truncated, or corrupt) or is larger than Pillow's pixel limit. With ``skip_bad_images`` the
images that cannot be used are left out instead, listed in the dataset's facts (a run's
data.json) and counted in the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpucnn.data import cache, images
from gpucnn.data.errors import DataError
from gpucnn.data.fetch import default_root
from gpucnn.data.source import Dataset, Part

log = logging.getLogger("gpucnn.data")

HIDDEN = frozenset({"__MACOSX"})
SPLITS = ("train", "val", "test")
MAX_DEFAULT_SIZE = 64
FORMAT = 1  # of the cache's manifest


def hidden(name: str) -> bool:
    return name.startswith(".") or name in HIDDEN


@dataclass
class FileList:
    """What a folder holds: classes and image files (relative path, size, mtime, label,
    split), in a fixed order: by split, then class, then path."""

    root: Path
    classes: tuple[str, ...]
    files: list[tuple[str, int, int, int, str]]
    ignored: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why) at listing
    split_on_disk: bool = False

    def digest(self) -> str:
        payload = json.dumps([self.classes, self.files, self.unreadable])
        return hashlib.sha256(payload.encode()).hexdigest()


def _walk(folder: Path, root: Path, seen: set) -> tuple[list[tuple[str, int, int]], int, list]:
    """Image files under ``folder`` (relative to ``root``, with size and mtime), the count of
    other files, and the files that could not be examined; links followed, each folder
    visited once."""
    found, ignored, unreadable = [], 0, []
    for here, dirs, files in os.walk(folder, followlinks=True):
        try:
            st = os.stat(here)
        except OSError:
            dirs[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:  # a link back to a folder already walked: a loop, or a second path
            dirs[:] = []
            continue
        seen.add(key)
        dirs[:] = sorted(d for d in dirs if not hidden(d))
        for name in sorted(files):
            if hidden(name):
                continue
            path = Path(here) / name
            rel = path.relative_to(root).as_posix()
            if path.suffix.lower() not in images.EXTENSIONS:
                ignored += 1
                continue
            try:
                fst = path.stat()
            except OSError as exc:
                unreadable.append((rel, f"cannot be read ({exc.strerror or exc})"))
                continue
            found.append((rel, int(fst.st_size), int(fst.st_mtime_ns)))
    return found, ignored, unreadable


def _class_folders(folder: Path) -> list[str]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from exc
    return [e.name for e in entries if not hidden(e.name) and e.is_dir()]


def scan(root: str | os.PathLike) -> FileList:
    """List a folder's classes and image files (no image is opened).

    Raises:
        DataError: the folder does not exist, holds no class folders, one class only, an
            empty class folder, or (split on disk) a class not among ``train/``'s.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(
            f"{root}: no such folder (a dataset given by path is a folder of class folders "
            "of images)"
        )
    subdirs = _class_folders(root)
    split_on_disk = "train" in subdirs and set(subdirs) <= set(SPLITS)
    files: list[tuple[str, int, int, int, str]] = []
    ignored, unreadable = 0, []
    if split_on_disk:
        classes = tuple(_class_folders(root / "train"))
        where = {s: root / s for s in SPLITS if s in subdirs}
    else:
        classes = tuple(subdirs)
        where = {"train": root}
    if not classes:
        loose = sum(1 for p in root.iterdir() if p.suffix.lower() in images.EXTENSIONS)
        extra = f" ({loose} images lie directly in it)" if loose else ""
        raise DataError(
            f"{where['train']}: no class folders{extra}; put each class's images in a "
            "subfolder named after the class (cat/, dog/, ...)"
        )
    if len(classes) == 1:
        raise DataError(
            f"{where['train']}: one class folder only ({classes[0]}/); a classifier needs at "
            "least two classes"
        )
    for split, base in where.items():
        present = _class_folders(base)
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise DataError(
                f"{base}: class folders {', '.join(unknown)} are not among {root / 'train'}'s "
                f"({', '.join(classes)})"
            )
        for label, name in enumerate(classes):
            if name not in present:
                continue
            found, n_other, bad = _walk(base / name, root, set())  # each folder once a class
            ignored += n_other
            unreadable += bad
            if not found and not bad:
                raise DataError(
                    f"{base / name}: the class folder holds no images "
                    f"({', '.join(sorted(e.lstrip('.') for e in images.EXTENSIONS))})"
                )
            files += [(rel, size, mtime, label, split) for rel, size, mtime in found]
        loose = [p for p in base.iterdir() if p.is_file() and not hidden(p.name)]
        ignored += len(loose)
    return FileList(root, classes, files, ignored, unreadable, split_on_disk)


def cache_folder(
    listing: FileList, options: dict[str, Any], root: str | os.PathLike | None
) -> Path:
    """Where the cache of a folder decoded with ``options`` lives."""
    base = Path(root).expanduser() if root is not None else default_root()
    key = hashlib.sha256(json.dumps([str(listing.root), options]).encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in listing.root.name)[:40]
    return base / "folders" / f"{slug or 'root'}-{key}"


def _check_options(image_size: int | None, channels: int | None) -> None:
    if image_size is not None and not (isinstance(image_size, int) and 4 <= image_size <= 4096):
        raise ValueError(f"image_size must be an integer in [4, 4096], got {image_size!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")


class _Bad:
    """Images that cannot be used: raise at the first, or (skip) collect them."""

    def __init__(self, skip: bool) -> None:
        self.skip, self.items = skip, []

    def add(self, rel: str, why: str, root: Path) -> None:
        if not self.skip:
            raise DataError(
                f"{root / rel}: {why}\n"
                "Fix or remove it, or pass --skip-bad-images (skip_bad_images=True) to leave "
                "out the images that cannot be used (they are listed in the run's data.json)"
            )
        self.items.append((rel, why))


def _decode(listing: FileList, folder: Path, image_size, channels, skip: bool) -> dict[str, Any]:
    """Decode every image into the cache ``folder`` (locked by the caller); returns the
    manifest written."""
    root = listing.root
    bad = _Bad(skip)
    for rel, why in listing.unreadable:
        bad.add(rel, why, root)
    heads: list[tuple[int, int, str] | None] = []
    start = time.monotonic()
    for rel, *_ in listing.files:
        try:
            heads.append(images.header(root / rel))
        except images.ImageError as exc:
            bad.add(rel, str(exc).split(": ", 1)[-1], root)
            heads.append(None)
    good = [h for h in heads if h is not None]
    if not good:
        raise DataError(f"{root}: none of the {len(heads)} images can be read")
    train_sizes = Counter(
        (h[0], h[1]) for h, f in zip(heads, listing.files, strict=True) if h and f[4] == "train"
    ) or Counter((h[0], h[1]) for h in good)
    common = train_sizes.most_common(1)[0][0]
    size = image_size or min(min(common), MAX_DEFAULT_SIZE)
    chans = channels or (1 if all(images.is_gray(h[2]) for h in good) else 3)
    n = len(listing.files)
    name = f"images-{listing.digest()[:16]}-{size}-{chans}.npy"
    ok = np.zeros(n, dtype=bool)
    log.info(
        "decoding %d images of %s into %s (%dx%d, %d channel%s)",
        len(good), root, folder, size, size, chans, "s" * (chans > 1),
    )  # fmt: skip
    last = time.monotonic()
    with cache.ArrayWriter(folder, name, (n, chans, size, size)) as out:
        for i, (rel, *_) in enumerate(listing.files):
            if heads[i] is None:
                continue
            try:
                out[i] = images.load(root / rel, size, chans)
                ok[i] = True
            except images.ImageError as exc:
                bad.add(rel, str(exc).split(": ", 1)[-1], root)
            if time.monotonic() - last > 5:
                last = time.monotonic()
                log.info("decoded %d of %d images", i + 1, n)
        out.commit()
    elapsed = time.monotonic() - start
    if bad.items:
        log.warning(
            "skipped %d image%s that cannot be used (listed in the run's data.json), e.g. %s: %s",
            len(bad.items), "s" * (len(bad.items) > 1), *bad.items[0],
        )  # fmt: skip
    log.info("decoded %d images in %.1f s", int(ok.sum()), elapsed)
    manifest = {
        "format": FORMAT,
        "source": str(root),
        "digest": listing.digest(),
        "images": name,
        "shape": [n, chans, size, size],
        "ok": np.flatnonzero(ok).tolist(),
        "skipped": [list(b) for b in bad.items],
        "classes": list(listing.classes),
        "split_on_disk": listing.split_on_disk,
        "decode_s": round(elapsed, 3),
        "options": {"image_size": image_size, "channels": channels, "skip": skip},
        "prepare": {"size": size, "channels": chans, "rule": images.RULE},
    }
    cache.write_manifest(folder, manifest)
    return manifest


def _valid(manifest: dict[str, Any] | None, listing: FileList, options: dict) -> bool:
    return (
        manifest is not None
        and manifest.get("format") == FORMAT
        and manifest.get("digest") == listing.digest()
        and manifest.get("options") == options
    )


def prepare_cache(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    skip_bad_images: bool = False,
) -> tuple[FileList, Path, dict[str, Any]]:
    """Scan the folder and make sure its cache is current; returns (listing, cache folder,
    manifest)."""
    _check_options(image_size, channels)
    listing = scan(path)
    options = {"image_size": image_size, "channels": channels, "skip": skip_bad_images}
    folder = cache_folder(listing, options, root)
    if folder.resolve().is_relative_to(listing.root):
        raise DataError(
            f"the data directory {folder.parents[1]} lies inside the dataset folder "
            f"{listing.root}: its cache would become one of the classes; pass --data-dir "
            "(GPUCNN_DATA_DIR) naming a folder outside it"
        )
    manifest = cache.read_manifest(folder)
    if _valid(manifest, listing, options):
        return listing, folder, manifest
    try:
        with cache.locked(folder):
            manifest = cache.read_manifest(folder)  # another process may have made it
            if not _valid(manifest, listing, options):
                manifest = _decode(listing, folder, image_size, channels, skip_bad_images)
    except OSError as exc:
        raise DataError(
            f"cannot write the decoded images to {folder} ({exc.strerror or exc}); pass "
            "--data-dir DIR (GPUCNN_DATA_DIR) naming a writable folder"
        ) from exc
    return listing, folder, manifest


def download(
    name: str,
    root: str | os.PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    skip_bad_images: bool = False,
) -> dict[str, Path]:
    """Decode the folder into its cache when it is not current (nothing is downloaded);
    returns {"images": the cache's images file}."""
    _, folder, manifest = prepare_cache(name, root, image_size, channels, skip_bad_images)
    return {"images": folder / manifest["images"]}


def open_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    download: bool = True,
    image_size: int | None = None,
    channels: int | None = None,
    skip_bad_images: bool = False,
    splits: Sequence[str] | None = None,
) -> Dataset:
    """The folder as a Dataset: its cache memory-mapped, one part per split on disk (only
    "train" when it has no split)."""
    listing, folder, manifest = prepare_cache(name, root, image_size, channels, skip_bad_images)
    array = cache.open_images(folder, manifest)
    ok = np.zeros(len(listing.files), dtype=bool)
    ok[manifest["ok"]] = True
    labels = np.array([f[3] for f in listing.files], dtype=np.int64)
    splits = np.array([f[4] for f in listing.files])
    parts = {}
    for split in SPLITS:
        rows = np.flatnonzero(ok & (splits == split))
        if len(rows):
            parts[split] = Part(array, labels[rows], rows)
    if "train" not in parts:
        raise DataError(f"{listing.root}: no training image can be used")
    return Dataset(
        name=str(listing.root),
        kind="folder",
        classes=listing.classes,
        parts=parts,
        normalization=None,
        stratified=True,
        prepare=dict(manifest["prepare"]),
        facts={
            "folder": str(listing.root),
            "cache": str(folder / manifest["images"]),
            "files_digest": manifest["digest"],
            "paths": [f[0] for f in listing.files],
            "ignored_files": listing.ignored,
            "skipped_images": manifest["skipped"],
            "split_on_disk": listing.split_on_disk,
        },
    )


class ImageFolder:
    """A folder of class folders of images, decoded once into a memory-mapped cache, in the
    manner of torchvision's ImageFolder (see the module docstring for the layout, the rule
    and the cache).

    Args:
        root: the folder.
        image_size: S, the side images are resized and cropped to (default: the shorter
            side of the training images' most common size, at most 64).
        channels: 3 (RGB) or 1 (grayscale); default: 1 when every image is grayscale.
        skip_bad_images: leave out images that cannot be used instead of failing.
        cache_root: the data directory holding the cache (default: GPUCNN_DATA_DIR, else
            ~/.cache/gpucnn).

    Attributes:
        classes: the class names, in label order.
        class_to_idx: {class name: label}.
        labels: int64 (N,), one per usable image.
        samples: (path, label) of each usable image, in the order of ``images``.
        split: "train", "val" or "test" for each image (from the folders).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int | None = None,
        channels: int | None = None,
        skip_bad_images: bool = False,
        cache_root: str | os.PathLike | None = None,
    ) -> None:
        self.dataset = open_dataset(
            str(root), cache_root, None, True, image_size, channels, skip_bad_images
        )
        parts = self.dataset.parts
        order = [s for s in SPLITS if s in parts]
        rows = np.concatenate([parts[s].rows() for s in order])
        self.root = Path(self.dataset.name)
        self.classes = list(self.dataset.classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self._array = parts["train"].images
        self._rows = rows
        self.labels = np.concatenate([parts[s].labels for s in order])
        paths = self.dataset.facts["paths"]
        self.samples = [
            (str(self.root / paths[r]), int(y)) for r, y in zip(rows, self.labels, strict=True)
        ]
        self.split = [s for s in order for _ in range(len(parts[s]))]

    @property
    def images(self) -> np.ndarray:
        """uint8 (N, C, S, S): the usable images, in ``samples`` order (read on access)."""
        return self._array[self._rows]

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        """(image uint8 (C, S, S), label)."""
        return np.asarray(self._array[self._rows[i]]), int(self.labels[i])

    def __repr__(self) -> str:
        c, s, _ = self.dataset.shape
        return (
            f"ImageFolder({str(self.root)!r}, {len(self)} images, {len(self.classes)} classes, "
            f"{c}x{s}x{s})"
        )
