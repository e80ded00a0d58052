"""Downloading IDX datasets so that nothing corrupt or half-written ever carries a final name.

Per file: stream into a temporary file in the target folder, decompress, verify the SHA-256
(of the decompressed file, or of the official .gz where only that is published), validate the
IDX header against the registry, fsync, then ``os.replace`` into place and record the digest.

Transient failures — connection errors, timeouts, HTTP 5xx and 429, a body cut short — are
retried on the same mirror with exponential backoff and jitter. Permanent ones — 403, 404,
other 4xx, a checksum mismatch, something that is not the expected IDX file — move on to the
next mirror at once. When every mirror fails, one DownloadError lists each and why.

A valid cached file is never fetched again: its digest is verified once and recorded with its
size and modification time in ``.verified.json``; a file that no longer matches its record is
hashed again, and replaced when it is corrupt. A lock file serialises processes filling one folder.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import random
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from gpucnn.data import idx
from gpucnn.data.errors import ChecksumError, DataError, DatasetFormatError, DownloadError
from gpucnn.data.registry import DatasetSpec, IdxFile, get_spec

log = logging.getLogger("gpucnn.data")

DEFAULT_TIMEOUT = (10.0, 60.0)  # (connect, read) seconds
RECORD = ".verified.json"
CHUNK = 1 << 16


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures on one mirror are retried.

    Attempt i (from 0) waits ``min(backoff * 2**i, max_backoff)`` seconds, scaled by a random
    factor in [1 - jitter, 1 + jitter]; a Retry-After header (seconds) is honoured up to
    max_backoff.
    """

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    jitter: float = 0.5

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        base = min(self.backoff * 2**attempt, self.max_backoff)
        if retry_after is not None:
            base = min(max(base, retry_after), self.max_backoff)
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


class _Transient(Exception):
    def __init__(self, why: str, retry_after: float | None = None) -> None:
        super().__init__(why)
        self.retry_after = retry_after


class _Permanent(Exception):
    """Give up on this mirror; ``transient`` when it was retries of passing faults that ran out."""

    def __init__(self, why: str, transient: bool = False) -> None:
        super().__init__(why)
        self.transient = transient


# -- where from, where to ------------------------------------------------------------------
def default_root() -> Path:
    """GPUCNN_DATA_DIR, else the per-user cache (XDG_CACHE_HOME or ~/.cache) / gpucnn."""
    env = os.environ.get("GPUCNN_DATA_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "gpucnn"


def dataset_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    return (Path(root).expanduser() if root is not None else default_root()) / name


def mirror_urls(spec: DatasetSpec, mirrors: Sequence[str] | None = None) -> list[str]:
    """GPUCNN_DATA_MIRROR first, then ``mirrors`` (or the registry's), each ending in "/"."""
    env = os.environ.get("GPUCNN_DATA_MIRROR")
    chosen = [env] if env else []
    chosen += list(mirrors) if mirrors is not None else list(spec.mirrors)
    out: list[str] = []
    for m in chosen:
        m = m if m.endswith("/") else m + "/"
        if m not in out:
            out.append(m)
    if not out:
        raise ValueError(f"no mirrors to download {spec.name} from")
    return out


# -- the verification record ---------------------------------------------------------------
def _read_records(folder: Path) -> dict[str, dict]:
    try:
        data = json.loads((folder / RECORD).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_records(folder: Path, records: dict[str, dict]) -> None:
    _atomic_write_bytes(folder / RECORD, json.dumps(records, indent=1, sort_keys=True).encode())


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.part-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_cached(path: Path, spec_file: IdxFile, records: dict[str, dict]) -> str | None:
    """None when ``path`` holds the right, verified content; otherwise why not.

    Updates ``records`` when a full verification succeeds.
    """
    if not path.exists():
        return "missing"
    st = path.stat()
    rec = records.get(spec_file.name)
    expected = spec_file.sha256 or (rec or {}).get("sha256")
    if (
        rec
        and rec.get("size") == st.st_size
        and rec.get("mtime_ns") == st.st_mtime_ns
        and (spec_file.sha256 is None or rec.get("sha256") == spec_file.sha256)
    ):
        return None
    if expected is None:
        return "no recorded digest to verify it against (it was not written by gpucnn)"
    digest = sha256_file(path)
    if digest != expected:
        return f"sha256 {digest}, expected {expected}"
    try:
        idx.validate(path, spec_file.shape)
    except DatasetFormatError as exc:
        return str(exc)
    records[spec_file.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    return None


# -- locking -------------------------------------------------------------------------------
@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder/.lock`` held for the block (blocks until free)."""
    with open(folder / ".lock", "a+b") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            import msvcrt

            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
            try:
                yield
            finally:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# -- fetching ------------------------------------------------------------------------------
def _network_error(exc: Exception) -> str:
    """A short reason for a requests failure ("ConnectTimeout", "[Errno 111] Connection
    refused") instead of urllib3's nested pool message."""
    text = str(exc)
    start = text.find("[Errno")
    if start >= 0:
        end = text.find(")", start)
        reason = text[start : end if end > 0 else None].rstrip("\"'")
        return f"{type(exc).__name__}: {reason}"
    if "timed out" in text.lower() or isinstance(exc, requests.Timeout):
        return f"{type(exc).__name__}: timed out"
    return f"{type(exc).__name__}: {text[:200]}"


def _retry_after(resp: requests.Response) -> float | None:
    try:
        return float(resp.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def _fetch_once(
    session: requests.Session, url: str, f: IdxFile, folder: Path, timeout: tuple[float, float]
) -> tuple[Path, str]:
    """Download, decompress and verify one file into a temporary file; returns (path, sha256).

    The caller owns the returned temporary file; on any failure nothing is left behind.
    """
    fd_gz, tmp_gz = tempfile.mkstemp(dir=folder, prefix=f".{f.remote}.part-")
    fd_raw, tmp_raw = tempfile.mkstemp(dir=folder, prefix=f".{f.name}.part-")
    os.close(fd_raw)
    ok = False
    try:
        try:
            resp = session.get(url, stream=True, timeout=timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Transient(_network_error(exc)) from exc
        with resp:
            if resp.status_code == 429 or resp.status_code >= 500:
                raise _Transient(f"HTTP {resp.status_code} {resp.reason}", _retry_after(resp))
            if resp.status_code != 200:
                raise _Permanent(f"HTTP {resp.status_code} {resp.reason}")
            length = resp.headers.get("Content-Length")
            h_gz, n = hashlib.sha256(), 0
            with os.fdopen(fd_gz, "wb") as out:
                fd_gz = -1
                try:
                    for chunk in resp.iter_content(CHUNK):
                        out.write(chunk)
                        h_gz.update(chunk)
                        n += len(chunk)
                except (
                    requests.ConnectionError,
                    requests.Timeout,
                    requests.exceptions.ChunkedEncodingError,
                ) as exc:
                    raise _Transient(
                        f"connection broke after {n} bytes: {_network_error(exc)}"
                    ) from exc
            if length is not None and length.isdigit() and n != int(length):
                raise _Transient(f"truncated body: {n} of {length} bytes")
        if f.gz_sha256 and h_gz.hexdigest() != f.gz_sha256:
            raise _Permanent(
                f"checksum mismatch: sha256 of {f.remote} is {h_gz.hexdigest()}, "
                f"expected {f.gz_sha256}"
            )
        h = hashlib.sha256()
        try:
            with gzip.open(tmp_gz, "rb") as src, open(tmp_raw, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                    h.update(chunk)
                dst.flush()
                os.fsync(dst.fileno())
        except EOFError as exc:  # a gzip stream cut short: the body was truncated
            raise _Transient(f"truncated gzip stream ({exc})") from exc
        except (OSError, zlib.error) as exc:
            raise _Permanent(f"not a gzip file ({exc}); got {n} bytes") from exc
        digest = h.hexdigest()
        if f.sha256 and digest != f.sha256:
            raise _Permanent(
                f"checksum mismatch: sha256 of decompressed {f.name} is {digest}, "
                f"expected {f.sha256}"
            )
        try:
            idx.validate(tmp_raw, f.shape)
        except DatasetFormatError as exc:
            raise _Permanent(f"format: {exc}") from exc
        ok = True
        return Path(tmp_raw), digest
    finally:
        if fd_gz >= 0:
            os.close(fd_gz)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_gz)
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_raw)


def _fetch_with_retries(session, url, f, folder, timeout, retry: RetryPolicy) -> tuple[Path, str]:
    for attempt in range(retry.attempts):
        try:
            return _fetch_once(session, url, f, folder, timeout)
        except _Transient as exc:
            if attempt + 1 == retry.attempts:
                raise _Permanent(
                    f"gave up after {retry.attempts} attempt{'s' * (retry.attempts != 1)}; "
                    f"last: {exc}",
                    transient=True,
                ) from exc
            wait = retry.delay(attempt, exc.retry_after)
            log.warning("%s: %s; retrying in %.1fs", url, exc, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def download(
    name: str,
    root: str | os.PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    *,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    retry: RetryPolicy | None = None,
) -> dict[str, Path]:
    """Make sure a dataset's four IDX files are present and verified; fetch what is not.

    Args:
        name: "mnist", "fashion-mnist" or "kmnist".
        root: cache folder (default: GPUCNN_DATA_DIR, else ~/.cache/gpucnn); files go in
            ``root/name/``.
        mirrors: URL prefixes to try in order instead of the registry's; GPUCNN_DATA_MIRROR,
            when set, is tried before them.
        timeout: (connect, read) timeouts in seconds.
        retry: the policy for transient failures.

    Returns:
        The local paths, keyed train_images, train_labels, test_images, test_labels.

    Raises:
        DownloadError: a file could not be had from any mirror (each mirror and why).
    """
    spec = get_spec(name)
    urls = mirror_urls(spec, mirrors)
    retry = retry or RetryPolicy()
    folder = dataset_dir(spec.name, root)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    with folder_lock(folder), requests.Session() as session:
        records = _read_records(folder)
        for key, f in spec.files.items():
            final = folder / f.name
            paths[key] = final
            why = check_cached(final, f, records)
            if why is None:
                continue
            if why != "missing":
                log.warning("%s: cached file is not valid (%s); fetching it again", final, why)
                final.unlink()
            attempts: list[tuple[str, str]] = []
            transient = True
            for base in urls:
                url = base + f.remote
                log.info("fetching %s", url)
                try:
                    tmp, digest = _fetch_with_retries(session, url, f, folder, timeout, retry)
                except _Permanent as exc:
                    log.warning("%s: %s", url, exc)
                    attempts.append((url, str(exc)))
                    transient = transient and exc.transient
                    continue
                os.replace(tmp, final)
                st = final.stat()
                records[f.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
                log.info("%s verified (sha256 %s)", final, digest)
                break
            else:
                raise DownloadError(f.name, attempts, transient)
            _write_records(folder, records)
        _write_records(folder, records)
    return paths


def verify_local(
    name: str, root: str | os.PathLike | None = None, keys: Sequence[str] | None = None
) -> dict[str, Path]:
    """The local paths of a dataset already downloaded, each verified; nothing is fetched.

    ``keys`` limits the check to some files (e.g. the two of one split).

    Raises:
        DataError: a file is missing.
        ChecksumError: a file does not hold what the registry (or its record) says.
    """
    spec = get_spec(name)
    folder = dataset_dir(spec.name, root)
    paths: dict[str, Path] = {}
    records = _read_records(folder) if folder.exists() else {}
    for key in keys if keys is not None else spec.files:
        f = spec.files[key]
        path = folder / f.name
        why = check_cached(path, f, records)
        if why == "missing":
            raise DataError(
                f"{path} is missing; call gpucnn.data.load({name!r}, download=True) "
                f"or gpucnn.data.download({name!r}) first"
            )
        if why is not None:
            raise ChecksumError(f"{path}: {why}; delete it or download again")
        paths[key] = path
    if folder.exists():
        with contextlib.suppress(OSError):
            _write_records(folder, records)
    return paths
