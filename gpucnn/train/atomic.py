"""Atomic file writes: a reader, or a run resumed after a kill, sees the old file or the new
one, never half of one.

The bytes go to a temporary file in the same folder, are flushed and fsynced, then renamed
over the final name (and the folder fsynced, so the rename itself is durable). The file is
made as ``open()`` makes one, its mode following the umask (0644 under the usual 022), so a
run folder's files all share one mode. With
``keep_previous`` the file being replaced is first renamed to ``<name>.prev<suffix>`` (e.g.
``last.prev.npz``): a run whose newest checkpoint turns out corrupt can fall back to the one
before. Each step is a named moment of gpucnn.train.faults, where tests kill the process.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from gpucnn.train import faults

PART = ".part-"  # temporary files are ".<name>.part-<random>"


def previous(path: Path) -> Path:
    """Where ``keep_previous`` keeps the replaced version: last.npz -> last.prev.npz."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def write_atomic(path: Path, write: Callable[[IO[bytes]], None], keep_previous: bool = False):
    """Write ``path`` through ``write(file)`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _make_temporary(path)
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # a full disk names the file it could not write
            raise OSError(exc.errno, f"{exc.strerror} (writing {path}; it is unchanged)") from exc
        faults.point(f"{path.name}:written")
        if keep_previous and path.exists():
            os.replace(path, previous(path))
            faults.point(f"{path.name}:rotated")
        os.replace(tmp, path)
        _sync_folder(path.parent)
        faults.point(f"{path.name}:replaced")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _make_temporary(path: Path) -> tuple[int, str]:
    """A new file beside ``path`` named ``.<name>.part-<random>``, open for writing; mode 0666
    less the umask, as open() makes files (tempfile.mkstemp would make it 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = str(path.parent / f".{path.name}{PART}{secrets.token_hex(4)}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def write_json(path: Path, value: Any) -> Path:
    """``value`` as indented JSON (NaN allowed), atomically."""
    text = json.dumps(value, indent=1, allow_nan=True).encode()
    return write_atomic(Path(path), lambda f: f.write(text))


def remove_stale_parts(folder: Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder``; returns them."""
    stale = [p for p in Path(folder).glob(f".*{PART}*") if p.is_file()]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
