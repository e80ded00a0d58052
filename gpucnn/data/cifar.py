"""CIFAR-10 from its official binary archive (cifar-10-binary.tar.gz; no pickle anywhere).

The archive is fetched through gpucnn.data.fetch (the same mirrors, GPUCNN_DATA_MIRROR, retries
and download deadline as the IDX files) into a temporary file and verified before anything is
extracted: its size, its published MD5 (c32a1d4ab5d03f1284b67883e8d87530) and its SHA-256
(c4a38c50…a1dd). Then every tar member is checked: a name inside the archive's folder
(``cifar-10-batches-bin/``; no absolute path, no ``..``), a regular file or a folder (no
links, devices or FIFOs), and each member gpucnn reads present at its expected size (a batch:
10,000 records of 1 label byte and 3,072 pixel bytes, the red plane, then green, then blue,
each 32 rows of 32). Only those members are extracted, each into a temporary file renamed into
place once whole; any refusal removes everything this call wrote. The SHA-256 of the archive
and of each extracted file are recorded in ``.verified.json``; later calls hash the extracted
files against that record (about 0.5 s), never trusting size and time alone.

Class names come from ``batches.meta.txt``; the normalisation is the commonly quoted
per-channel mean (0.4914, 0.4822, 0.4465) and std (0.2470, 0.2435, 0.2616) of the training set.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

from gpucnn.data import fetch
from gpucnn.data.errors import ChecksumError, DataError, DatasetFormatError
from gpucnn.data.normalization import Normalization
from gpucnn.data.source import Dataset, Part

log = logging.getLogger("gpucnn.data")

PIXELS = 3 * 32 * 32  # bytes of one image: the R, G and B planes of 32×32


@dataclass(frozen=True)
class ArchiveSpec:
    """An archive in CIFAR-10's binary layout and what verifies it.

    Attributes:
        name: the dataset's name (and its folder in the data directory).
        archive: the file the mirrors serve.
        size: its size in bytes.
        md5: its published MD5.
        sha256: its SHA-256 where known (else the one measured at the first verified
            download is recorded and used from then on).
        folder: the folder every member lies in.
        records: records per batch file (10,000).
        mirrors: URL prefixes serving ``archive``.
        classes: the expected number of class names in batches.meta.txt.
    """

    name: str
    archive: str
    size: int
    md5: str
    sha256: str | None
    folder: str
    records: int
    mirrors: tuple[str, ...]
    classes: int = 10

    @property
    def batches(self) -> dict[str, str]:
        """{split: batch files}, in order."""
        return {
            "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
            "test": ["test_batch.bin"],
        }

    @property
    def members(self) -> dict[str, int | None]:
        """The members gpucnn extracts, by name within ``folder``, with their sizes (None:
        any size up to 64 KiB)."""
        sizes: dict[str, int | None] = {
            name: self.records * (1 + PIXELS) for files in self.batches.values() for name in files
        }
        sizes["batches.meta.txt"] = None
        return sizes


SPEC = ArchiveSpec(
    name="cifar10",
    archive="cifar-10-binary.tar.gz",
    size=170_052_171,
    md5="c32a1d4ab5d03f1284b67883e8d87530",
    # the archive as served by cs.toronto.edu (170,052,171 bytes), the SHA-256 that other
    # dataset loaders pin for it too (MLDatasets.jl, torchvision-rb); both digests are checked
    sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    folder="cifar-10-batches-bin",
    records=10_000,
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
META_LIMIT = 1 << 16


def _folder(root: str | os.PathLike | None) -> Path:
    return fetch.dataset_dir(SPEC.name, root) / SPEC.folder


def _check_cached(folder: Path, records: dict[str, dict]) -> dict[str, str]:
    """{member: why it is not good} for each extracted member (empty: all verified)."""
    bad = {}
    for name, size in SPEC.members.items():
        path = folder / name
        if not path.exists():
            bad[name] = "missing"
            continue
        want = records.get(name, {}).get("sha256")
        if want is None:
            bad[name] = "no recorded digest to verify it against (it was not written by gpucnn)"
        elif size is not None and path.stat().st_size != size:
            bad[name] = f"{path.stat().st_size} bytes, expected {size}"
        elif (got := fetch.sha256_file(path)) != want:
            bad[name] = f"sha256 {got}, expected {want}"
    return bad


def check_members(archive: Any, members: list[tarfile.TarInfo]) -> dict[str, tarfile.TarInfo]:
    """The members to extract, by name within the folder, after checking every member.

    Raises:
        DatasetFormatError: a name outside the archive's folder (absolute, ``..``), a member
            that is a link, device or FIFO, an expected member missing or of another size.
    """
    prefix = SPEC.folder + "/"
    wanted: dict[str, tarfile.TarInfo] = {}
    for m in members:
        name = m.name
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or not (name + "/").startswith(prefix):
            raise DatasetFormatError(
                f"{archive}: member {name!r} lies outside {prefix} (only names inside the "
                "archive's folder are allowed); nothing was extracted"
            )
        if not (m.isfile() or m.isdir()):
            what = "a link" if m.issym() or m.islnk() else "not a regular file"
            target = f" to {m.linkname!r}" if m.linkname else ""
            raise DatasetFormatError(
                f"{archive}: member {name!r} is {what}{target}; the archive holds regular "
                "files only; nothing was extracted"
            )
        inner = name[len(prefix) :]
        if m.isfile() and inner in SPEC.members:
            if inner in wanted:
                raise DatasetFormatError(f"{archive}: member {name!r} appears twice")
            wanted[inner] = m
    for inner, size in SPEC.members.items():
        if inner not in wanted:
            raise DatasetFormatError(
                f"{archive}: member {prefix}{inner} is missing; nothing was extracted"
            )
        got = wanted[inner].size
        if (size is not None and got != size) or (size is None and got > META_LIMIT):
            expected = f"{size:,} bytes" if size is not None else f"at most {META_LIMIT:,} bytes"
            raise DatasetFormatError(
                f"{archive}: member {prefix}{inner} holds {got:,} bytes, expected {expected} "
                f"({SPEC.records:,} records of 1 label byte and {PIXELS:,} pixel bytes); "
                "nothing was extracted"
            )
    return wanted


def extract(archive: Path, folder: Path, label: str | None = None) -> dict[str, str]:
    """Check the archive's members, then extract the ones gpucnn reads into ``folder``
    (each through a temporary file); returns {member: sha256}. On any failure nothing
    this call wrote is left. ``label`` names the archive in messages (default: its path).

    Raises:
        DatasetFormatError: a member check failed, or the archive is not a whole .tar.gz.
    """
    done: list[Path] = []
    ok = False
    try:
        try:
            with tarfile.open(archive, "r:gz") as tf:
                wanted = check_members(label or archive, tf.getmembers())
                digests = {}
                folder.mkdir(parents=True, exist_ok=True)
                for inner, m in wanted.items():
                    digests[inner] = _extract_one(tf, m, folder / inner, done)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DatasetFormatError(
                f"{label or archive}: not a whole .tar.gz archive ({type(exc).__name__}: {exc}); "
                "nothing was extracted"
            ) from exc
        ok = True
        return digests
    finally:
        if not ok:
            for path in done:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _extract_one(tf: tarfile.TarFile, m: tarfile.TarInfo, final: Path, done: list[Path]) -> str:
    src = tf.extractfile(m)
    if src is None:
        raise DatasetFormatError(f"member {m.name!r} cannot be read as a file")
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.part-")
    h, n = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
                h.update(chunk)
                n += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if n != m.size:
            raise DatasetFormatError(f"member {m.name!r}: {n} bytes read of {m.size}")
        os.replace(tmp, final)
        done.append(final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return h.hexdigest()


def _fetch_archive(session, url, folder, timeout, min_rate, clock) -> tuple[Path, str]:
    """Download the archive and check its size and digests; returns (temporary file, sha256)."""
    tmp, sha, md5, n = fetch.fetch_to_temp(
        session, url, SPEC.archive, folder, timeout, min_rate, clock
    )
    problem = None
    if n != SPEC.size:
        problem = f"{n:,} bytes, expected {SPEC.size:,}"
    elif md5.hexdigest() != SPEC.md5:
        problem = f"checksum mismatch: md5 {md5.hexdigest()}, expected {SPEC.md5}"
    elif SPEC.sha256 and sha.hexdigest() != SPEC.sha256:
        problem = f"checksum mismatch: sha256 {sha.hexdigest()}, expected {SPEC.sha256}"
    if problem is not None:
        tmp.unlink()
        raise fetch.Permanent(problem)
    return tmp, sha.hexdigest()


def download(
    name: str = "cifar10",
    root: str | os.PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    *,
    timeout: tuple[float, float] = fetch.DEFAULT_TIMEOUT,
    retry: fetch.RetryPolicy | None = None,
    min_rate: float = fetch.DEFAULT_MIN_RATE,
    deadline: float | None = None,
) -> dict[str, Path]:
    """Make sure the extracted batches are present and verified; fetch the archive if not.

    Arguments as gpucnn.data.fetch.download's (``mirrors``: URL prefixes serving
    cifar-10-binary.tar.gz; GPUCNN_DATA_MIRROR first when set).

    Returns:
        {member name: path} of the extracted files.

    Raises:
        DownloadError: no mirror served an archive that passed every check (each mirror and
            why: size, MD5, a member refused).
        DataError: the files are missing or corrupt in a folder that cannot be written.
    """
    fetch.check_data_dir(root, SPEC.name)
    urls = fetch.mirror_urls(SPEC, mirrors)  # type: ignore[arg-type]
    retry = retry or fetch.RetryPolicy()
    clock = fetch.Clock(fetch.resolve_deadline(deadline))
    folder = _folder(root)
    paths = {inner: folder / inner for inner in SPEC.members}
    bad = _check_cached(folder, fetch.read_records(folder))
    if not bad:
        return paths
    with contextlib.ExitStack() as stack:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            stack.enter_context(fetch.folder_lock(folder, clock.left()))
        except OSError as exc:
            raise fetch.cannot_write(folder, bad, exc) from exc
        records = fetch.read_records(folder)
        if not _check_cached(folder, records):
            return paths
        for inner in bad:
            with contextlib.suppress(FileNotFoundError):
                (folder / inner).unlink()
        session = stack.enter_context(requests.Session())

        def attempt(url: str) -> tuple[Path, str, dict[str, str]]:
            tmp, sha = _fetch_archive(session, url, folder, timeout, min_rate, clock)
            try:
                return tmp, sha, extract(tmp, folder, SPEC.archive)
            except DatasetFormatError as exc:
                raise fetch.Permanent(str(exc)) from exc
            finally:
                tmp.unlink(missing_ok=True)

        failures = dict.fromkeys(urls, 0)
        _, sha, digests = fetch.from_mirrors(
            urls, SPEC.archive, attempt, retry, clock, failures, SPEC.name
        )
        records = {SPEC.archive: {"sha256": sha, "md5": SPEC.md5}}
        for inner, digest in digests.items():
            st = (folder / inner).stat()
            records[inner] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        fetch.write_records(folder, records)
        log.info("%s verified (archive sha256 %s); extracted into %s", SPEC.archive, sha, folder)
    return paths


fetch_archive = download  # open_dataset's flag is named download


def read_batch(path: Path, records: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (records, 3, 32, 32), labels int64 (records,)) of one batch file."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size != records * (1 + PIXELS):
        raise DatasetFormatError(
            f"{path}: {raw.size:,} bytes, expected {records * (1 + PIXELS):,} ({records:,} "
            f"records of 1 label byte and {PIXELS:,} pixel bytes)"
        )
    rows = raw.reshape(records, 1 + PIXELS)
    labels = rows[:, 0].astype(np.int64)
    if labels.size and labels.max() >= SPEC.classes:
        raise DatasetFormatError(f"{path}: label {labels.max()} outside [0, {SPEC.classes})")
    return np.ascontiguousarray(rows[:, 1:]).reshape(records, 3, 32, 32), labels


def read_classes(path: Path) -> tuple[str, ...]:
    """The class names of batches.meta.txt: one per line, blank lines ignored."""
    names = tuple(line.strip() for line in path.read_text("ascii").splitlines() if line.strip())
    if len(names) != SPEC.classes:
        raise DatasetFormatError(f"{path}: {len(names)} class names, expected {SPEC.classes}")
    return names


def open_dataset(
    name: str = "cifar10",
    root: str | os.PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    download: bool = True,
    splits: Sequence[str] = ("train", "test"),
) -> Dataset:
    """CIFAR-10, verified (fetched first with ``download``): 50,000 training and 10,000 test
    images, uint8 (N, 3, 32, 32)."""
    folder = _folder(root)
    if download:
        fetch_archive(name, root, mirrors)
    else:
        bad = _check_cached(folder, fetch.read_records(folder))
        if bad:
            first, why = next(iter(bad.items()))
            kind = DataError if why == "missing" else ChecksumError
            raise kind(
                f"{folder / first}: {why}; call gpucnn.data.load('cifar10', download=True) first"
            )
    parts = {}
    for split in splits:
        files = SPEC.batches[split]
        arrays = [read_batch(folder / f, SPEC.records) for f in files]
        parts[split] = Part(
            np.concatenate([a for a, _ in arrays]), np.concatenate([b for _, b in arrays])
        )
    records = fetch.read_records(folder)
    return Dataset(
        name=name,
        kind="cifar10",
        classes=read_classes(folder / "batches.meta.txt"),
        parts=parts,
        normalization=Normalization(MEAN, STD),
        facts={"archive": SPEC.archive, "sha256": {k: v.get("sha256") for k, v in records.items()}},
    )


def describe(name: str = "cifar10") -> dict[str, Any]:
    """What a CIFAR-10 model takes (Dataset.info's form); class names as published."""
    return {
        "kind": "cifar10",
        "classes": list(CLASSES),
        "shape": [3, 32, 32],
        "normalization": Normalization(MEAN, STD).to_dict(),
        "prepare": None,
    }


CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def train_count(name: str = "cifar10") -> int:
    return 5 * SPEC.records
