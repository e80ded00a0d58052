"""Decoded datasets on disk: uint8 arrays written once, atomically, and read as memory maps.

A cache is a folder holding ``images-<key>.npy`` (uint8 (N, C, H, W), NumPy's .npy format,
read with ``allow_pickle=False``) and ``manifest.json``, which names the key and everything the
arrays were made from. The array is written into a temporary file (``.images-<key>.npy.part-*``)
row by row, flushed and fsynced, renamed into place, and only then is the manifest replaced
(atomically): a crash or Ctrl-C while caching leaves the previous cache, or none, never a
half-written one, and the temporary file is removed (by the writer, or by the next writer
when the process was killed).

Reading maps the file: pages come from disk as rows are read, and :func:`release_pages` hands
them back to the kernel (``madvise(MADV_DONTNEED)``), so a cache larger than memory is read in
bounded resident memory.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gpucnn.data.errors import DataError

MANIFEST = "manifest.json"
RELEASE_EVERY = 64 << 20  # bytes written between releases of a cache being filled


def release_pages(array: Any) -> None:
    """Hand the resident pages of a memory-mapped array back to the kernel.

    The data stays in the file (and in the page cache while memory allows); the process's
    resident memory no longer counts it, and the next read maps it back in. Arrays that are
    not memory-mapped are left alone."""
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is not None and hasattr(base, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            base.madvise(mmap.MADV_DONTNEED)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The cache's manifest, or None when there is none (or it is unreadable)."""
    try:
        value = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def open_images(folder: Path, manifest: dict[str, Any]) -> np.ndarray:
    """The cache's images, memory-mapped read-only, checked against the manifest.

    Raises:
        DataError: the file is missing or does not hold the array the manifest describes.
    """
    path = folder / manifest["images"]
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: the cached images cannot be read ({exc})") from exc
    if images.dtype != np.uint8 or list(images.shape) != list(manifest["shape"]):
        raise DataError(
            f"{path}: cached {images.dtype} {tuple(images.shape)}, the manifest says uint8 "
            f"{tuple(manifest['shape'])}"
        )
    return images


def remove_parts(folder: Path) -> None:
    """Remove temporary files a killed writer left (call with the folder's lock held)."""
    for p in folder.glob(".*.part-*"):
        with contextlib.suppress(OSError):
            p.unlink()


class ArrayWriter:
    """Fill a uint8 array of ``shape`` on disk, row by row, into a temporary file of
    ``folder``; :meth:`commit` renames it to ``name``. Leaving the ``with`` block without a
    commit (an error, Ctrl-C) removes the temporary file."""

    def __init__(self, folder: Path, name: str, shape: tuple[int, ...]) -> None:
        self.folder, self.name, self.shape = folder, name, tuple(shape)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.part-")
        os.close(fd)
        self.tmp = Path(tmp)
        self.array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=self.shape)
        self._since = 0
        self._row = int(np.prod(self.shape[1:], dtype=np.int64))
        self.committed = False

    def __enter__(self) -> ArrayWriter:
        return self

    def __setitem__(self, i: int, row: np.ndarray) -> None:
        self.array[i] = row
        self._since += self._row
        if self._since >= RELEASE_EVERY:  # dirty pages go to disk, not into our memory
            self.array.flush()
            release_pages(self.array)
            self._since = 0

    def commit(self) -> Path:
        """Flush, fsync and rename into place; returns the final path."""
        self.array.flush()
        release_pages(self.array)
        del self.array
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        final = self.folder / self.name
        os.replace(self.tmp, final)
        self.committed = True
        return final

    def __exit__(self, *exc: Any) -> None:
        if not self.committed:
            self.__dict__.pop("array", None)
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically (temporary file, fsync, rename), then remove the
    arrays no manifest names any more."""
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{MANIFEST}.part-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / MANIFEST)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    for old in folder.glob("images-*.npy"):
        if old.name != manifest["images"]:
            with contextlib.suppress(OSError):
                old.unlink()


@contextlib.contextmanager
def locked(folder: Path, deadline: float | None = None) -> Iterator[None]:
    """The cache folder made and locked for a writer (gpucnn.data.fetch.folder_lock), with
    what a killed writer left removed."""
    from gpucnn.data.fetch import folder_lock

    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder, deadline):
        remove_parts(folder)
        yield
