"""Downloading IDX datasets so that nothing corrupt or half-written ever carries a final name,
and so that a download always ends.

Per file: stream into a temporary file in the target folder, decompress, verify the SHA-256
(of the decompressed file, or of the official .gz where only that is published), validate the
IDX header against the registry, fsync, then ``os.replace`` into place and record the digest.

Transient failures — connection timeouts and resets, stalls, a transfer below the rate floor,
HTTP 5xx and 429, a body cut short — are retried on the same mirror with exponential backoff and
jitter. Permanent ones — 403, 404, other 4xx, a checksum mismatch, something that is not the
expected IDX file — move on to the next mirror at once. So does an unreachable mirror: a name
that does not resolve, a connection refused, no route to the network or host (what a machine
offline meets): retrying it in a second changes nothing, so offline the call fails in moments,
with an error (``DownloadError.unreachable``) that flows do not retry either. A mirror that
failed is tried after the others for the rest of the call. When every mirror fails, one
DownloadError lists each and why.

Every download ends: an attempt ends when no byte arrives for ``timeout[1]`` seconds (a stall,
including a server that never answers) or when the body arrives slower than ``min_rate``
bytes/s over a window of that many seconds (a trickle); the whole call — waiting for another
process's lock, every file, mirror, retry and back-off — ends at one deadline (``deadline``,
else GPUCNN_DOWNLOAD_DEADLINE seconds, else 10 minutes).

The cache is verified on every call, never trusted on size and time alone: each file is hashed
(about 0.1 s for MNIST) against the registry's digest, or, where the registry has only digests of
the .gz files, against the one recorded in ``.verified.json`` when gpucnn downloaded it. A cache
that is complete and valid is only read (no lock, no record written), so a read-only folder
works. A lock file holding its holder's PID serialises processes filling one folder.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import http.client
import json
import logging
import os
import random
import socket
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import requests
import urllib3.exceptions

from gpucnn.data import idx
from gpucnn.data.errors import (
    CacheLockError,
    ChecksumError,
    DataError,
    DatasetFormatError,
    DownloadError,
)
from gpucnn.data.registry import DatasetSpec, IdxFile, get_spec

log = logging.getLogger("gpucnn.data")

DEFAULT_TIMEOUT = (10.0, 30.0)  # (connect, stall) seconds
DEFAULT_MIN_RATE = 1024.0  # bytes/s; below it over a stall-long window, an attempt ends
DEFAULT_DEADLINE = 600.0  # seconds for a whole download() call
DEADLINE_ENV = "GPUCNN_DOWNLOAD_DEADLINE"
RECORD = ".verified.json"
LOCK = ".lock"
CHUNK = 1 << 16
T = TypeVar("T")


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
    """A failure that may pass; ``by_deadline`` when the download deadline cut it short."""

    def __init__(self, why: str, retry_after: float | None = None, by_deadline: bool = False):
        super().__init__(why)
        self.retry_after = retry_after
        self.by_deadline = by_deadline


class Permanent(Exception):
    """Give up on this mirror; ``transient`` when it was retries of passing faults that ran out
    (or the deadline, then ``deadline`` too); ``unreachable`` when it could not be reached."""

    def __init__(
        self, why: str, transient: bool = False, deadline: bool = False, unreachable: bool = False
    ) -> None:
        super().__init__(why)
        self.transient = transient
        self.deadline = deadline
        self.unreachable = unreachable


class Clock:
    """The one deadline of a download call."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def __str__(self) -> str:
        return f"{self.seconds:g} s"


def resolve_deadline(deadline: float | None = None) -> float:
    """``deadline``, else GPUCNN_DOWNLOAD_DEADLINE, else 600 seconds; ``math.inf`` for none."""
    source = "deadline"
    if deadline is None:
        env = os.environ.get(DEADLINE_ENV, "").strip()
        if not env:
            return DEFAULT_DEADLINE
        source = DEADLINE_ENV
        try:
            deadline = float(env)
        except ValueError:
            raise ValueError(f"{DEADLINE_ENV}={env!r} is not a number of seconds") from None
    if not deadline > 0:  # also refuses NaN
        raise ValueError(f"{source} must be a positive number of seconds, got {deadline!r}")
    return float(deadline)


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


def check_data_dir(root: str | os.PathLike | None, name: str) -> None:
    """Refuse a data directory that is a folder of class folders of images, not a cache.

    ``--data-dir`` is where gpucnn keeps the datasets it downloads and decodes; a user who
    points it at their own photos means ``--dataset PATH``. A folder holding ``name``'s
    cache, or gpucnn's records, is a cache whatever else it holds.

    Raises:
        DataError: naming the folder, its class folders and the option that trains on them.
    """
    from gpucnn.data.images import EXTENSIONS

    base = Path(root).expanduser() if root is not None else default_root()
    if not base.is_dir() or (base / name).exists() or (base / "folders").is_dir():
        return
    classes = []
    try:
        for entry in sorted(os.scandir(base), key=lambda e: e.name)[:200]:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            with os.scandir(entry.path) as inner:
                for _, f in zip(range(50), inner, strict=False):
                    if Path(f.name).suffix.lower() in EXTENSIONS:
                        classes.append(entry.name + "/")
                        break
    except OSError:
        return
    if classes:
        shown = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
        raise DataError(
            f"--data-dir {base} holds class folders of images ({shown}), not gpucnn's dataset "
            f"cache: to train on these images pass --dataset {base} (--data-dir, "
            "GPUCNN_DATA_DIR, is where gpucnn keeps the datasets it downloads and decodes)"
        )


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
def read_records(folder: Path) -> dict[str, dict]:
    """What ``folder``'s .verified.json records: {file name: {size, mtime_ns, sha256}}."""
    try:
        data = json.loads((folder / RECORD).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_records(folder: Path, records: dict[str, dict]) -> None:
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
    """None when ``path`` holds the right content; otherwise why not. Reads, never writes.

    The file is hashed every time: a size and a modification time prove nothing (bytes can
    change with the timestamp restored).
    """
    if not path.exists():
        return "missing"
    expected = spec_file.sha256 or records.get(spec_file.name, {}).get("sha256")
    if expected is None:
        return "no recorded digest to verify it against (it was not written by gpucnn)"
    digest = sha256_file(path)
    if digest != expected:
        return f"sha256 {digest}, expected {expected}"
    try:
        idx.validate(path, spec_file.shape)
    except DatasetFormatError as exc:
        return str(exc)
    return None


# -- locking -------------------------------------------------------------------------------
def _lock_holder(path: Path) -> str:
    """Who holds the lock, as its holder wrote it ("process PID on HOST")."""
    try:
        pid, _, host = path.read_text().strip().partition(" ")
    except (OSError, UnicodeDecodeError):
        pid, host = "", ""
    if not pid.isdigit():
        return "another process (no PID recorded yet)"
    return f"process {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")


@contextlib.contextmanager
def folder_lock(folder: Path, deadline: float | None = None, poll: float = 0.05) -> Iterator[None]:
    """An exclusive lock on ``folder/.lock`` held for the block; the file names its holder.

    Waiting for another holder is logged once (with its PID) on the "gpucnn.data" logger and
    lasts at most ``deadline`` seconds (None: no bound), then raises CacheLockError.
    """
    path = folder / LOCK
    end = time.monotonic() + deadline if deadline is not None else None
    with open(path, "a+b") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            import msvcrt

            def try_lock() -> bool:
                f.seek(0)
                try:
                    msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
                except OSError:
                    return False
                return True

            def unlock() -> None:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)

        else:

            def try_lock() -> bool:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                return True

            def unlock() -> None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

        if not try_lock():
            start = time.monotonic()
            bound = f"giving up in {end - start:.0f} s" if end is not None else "without a bound"
            log.warning("waiting for %s, held by %s (%s)", path, _lock_holder(path), bound)
            while not try_lock():
                if end is not None and time.monotonic() >= end:
                    raise CacheLockError(path, _lock_holder(path), time.monotonic() - start)
                left = end - time.monotonic() if end is not None else poll
                time.sleep(max(0.0, min(poll, left)))
                poll = min(poll * 1.5, 0.5)
        try:
            with contextlib.suppress(OSError):  # the PID only informs; the lock is the flock
                f.truncate(0)
                f.write(f"{os.getpid()} {socket.gethostname()}\n".encode())
                f.flush()
            yield
        finally:
            with contextlib.suppress(OSError):
                f.truncate(0)  # before unlocking: afterwards it could erase the next holder's
            unlock()


# -- fetching ------------------------------------------------------------------------------
# What reading a streamed body raises: urllib3's errors (read timeouts, broken connections, a
# body shorter than its Content-Length), requests' wrappers of them, and socket errors.
_READ_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


def _is_timeout(exc: BaseException | None) -> bool:
    """Whether a read failed because no byte came in time (requests nests urllib3's error).

    Not urllib3's NewConnectionError, which subclasses its TimeoutError for old callers.
    """
    for _ in range(6):
        if exc is None or isinstance(exc, urllib3.exceptions.NewConnectionError):
            return False
        if isinstance(exc, (urllib3.exceptions.ReadTimeoutError, requests.ReadTimeout)):
            return True
        if isinstance(exc, TimeoutError):  # socket.timeout
            return True
        nested = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        exc = nested or exc.__cause__ or exc.__context__
    return False


# Connecting failed in a way that trying again at once does not change: nothing listens there
# (refused), or no route leads there (a machine offline, a network down)
_UNREACHABLE_ERRNOS = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH}


def _is_unreachable(exc: BaseException | None) -> bool:
    """Whether a connection failed because the mirror's name does not resolve (socket.gaierror,
    which urllib3 wraps as NameResolutionError) or nothing can be reached at its address
    (refused, no route), as opposed to a timeout or a reset, which may pass."""
    for _ in range(8):
        if exc is None:
            return False
        if isinstance(exc, socket.gaierror):
            return True
        if isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS:
            return True
        reason = getattr(exc, "reason", None)  # urllib3's MaxRetryError holds the cause here
        if not isinstance(reason, BaseException):
            reason = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        exc = reason or exc.__cause__ or exc.__context__
    return False


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


def _body_reader(resp: requests.Response) -> tuple[Callable[[], bytes], socket.socket | None]:
    """A function returning the next bytes of the body as soon as any arrive (b"" at the end),
    and the socket beneath, whose timeout may be shortened to meet the deadline.

    ``read1`` returns what has arrived rather than waiting for a full chunk, so a trickle is
    seen as it comes; urllib3 before 2.x lacks it, and then whole chunks are read.
    """
    read1 = getattr(resp.raw, "read1", None)
    if read1 is not None:
        reader = lambda: read1(CHUNK, decode_content=True) or b""  # noqa: E731
    else:  # pragma: no cover - urllib3 < 2
        chunks = resp.iter_content(CHUNK)
        reader = lambda: next(chunks, b"")  # noqa: E731
    conn = getattr(resp.raw, "connection", None) or getattr(resp.raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    return reader, sock if isinstance(sock, socket.socket) else None


def _download_body(
    resp, out, stall: float, min_rate: float, clock: Clock
) -> tuple[hashlib._Hash, hashlib._Hash]:
    """Stream the body into ``out``, ending the attempt on a stall, a trickle or the deadline;
    returns its SHA-256 and MD5."""
    reader, sock = _body_reader(resp)
    h, m, n = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    window_start, window_n = time.monotonic(), 0
    while True:
        wait = min(stall, clock.left())
        if wait <= 0:
            raise _Transient(f"cut short by the deadline after {n} bytes", by_deadline=True)
        if sock is not None and wait < stall:
            with contextlib.suppress(OSError):
                sock.settimeout(wait)
        try:
            chunk = reader()
        except _READ_ERRORS as exc:
            if _is_timeout(exc) and wait < stall:
                msg = f"cut short by the deadline after {n} bytes"
                raise _Transient(msg, by_deadline=True) from exc
            if _is_timeout(exc):
                raise _Transient(f"stalled: no data for {stall:g} s after {n} bytes") from exc
            raise _Transient(f"connection broke after {n} bytes: {_network_error(exc)}") from exc
        if not chunk:
            return h, m
        out.write(chunk)
        h.update(chunk)
        m.update(chunk)
        n += len(chunk)
        now = time.monotonic()
        if min_rate > 0 and now - window_start >= stall:
            rate = (n - window_n) / (now - window_start)
            if rate < min_rate:
                raise _Transient(
                    f"too slow: {rate:.0f} bytes/s over {now - window_start:.1f} s, below the "
                    f"floor of {min_rate:g} bytes/s ({n} bytes received)"
                )
            window_start, window_n = now, n


def fetch_to_temp(
    session: requests.Session,
    url: str,
    name: str,
    folder: Path,
    timeout: tuple[float, float],
    min_rate: float,
    clock: Clock,
) -> tuple[Path, hashlib._Hash, hashlib._Hash, int]:
    """Stream ``url`` into a temporary file in ``folder``; returns (path, its SHA-256, its
    MD5, its size). The caller owns the file; on any failure nothing is left behind."""
    connect, stall = timeout
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.part-")
    ok = False
    try:
        left = clock.left()
        if left <= 0:
            raise _Transient("not started: the deadline had passed", by_deadline=True)
        try:
            resp = session.get(url, stream=True, timeout=(min(connect, left), min(stall, left)))
        except requests.ConnectTimeout as exc:
            if left < connect:
                raise _Transient("cut short by the deadline", by_deadline=True) from exc
            raise _Transient(f"could not connect within {connect:g} s (ConnectTimeout)") from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            if _is_timeout(exc) and left < stall:
                raise _Transient("cut short by the deadline", by_deadline=True) from exc
            if _is_timeout(exc):
                raise _Transient(f"stalled: no response within {stall:g} s (ReadTimeout)") from exc
            if _is_unreachable(exc):
                why = f"unreachable (not retried): {_network_error(exc)}"
                raise Permanent(why, unreachable=True) from exc
            raise _Transient(_network_error(exc)) from exc
        with resp:
            if resp.status_code == 429 or resp.status_code >= 500:
                raise _Transient(f"HTTP {resp.status_code} {resp.reason}", _retry_after(resp))
            if resp.status_code != 200:
                raise Permanent(f"HTTP {resp.status_code} {resp.reason}")
            length = resp.headers.get("Content-Length")
            with os.fdopen(fd, "wb") as out:
                fd = -1
                sha, md5 = _download_body(resp, out, stall, min_rate, clock)
                n = out.tell()
                out.flush()
                os.fsync(out.fileno())
            if length is not None and length.isdigit() and n != int(length):
                raise _Transient(f"truncated body: {n} of {length} bytes")
        ok = True
        return Path(tmp), sha, md5, n
    finally:
        if fd >= 0:
            os.close(fd)
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _fetch_once(
    session: requests.Session,
    url: str,
    f: IdxFile,
    folder: Path,
    timeout: tuple[float, float],
    min_rate: float,
    clock: Clock,
) -> tuple[Path, str]:
    """Download, decompress and verify one IDX file into a temporary file; returns (path,
    sha256). The caller owns the returned temporary file; on any failure nothing is left
    behind."""
    tmp_gz, h_gz, _, n = fetch_to_temp(session, url, f.remote, folder, timeout, min_rate, clock)
    fd_raw, tmp_raw = tempfile.mkstemp(dir=folder, prefix=f".{f.name}.part-")
    os.close(fd_raw)
    ok = False
    try:
        if f.gz_sha256 and h_gz.hexdigest() != f.gz_sha256:
            raise Permanent(
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
            raise Permanent(f"not a gzip file ({exc}); got {n} bytes") from exc
        digest = h.hexdigest()
        if f.sha256 and digest != f.sha256:
            raise Permanent(
                f"checksum mismatch: sha256 of decompressed {f.name} is {digest}, "
                f"expected {f.sha256}"
            )
        try:
            idx.validate(tmp_raw, f.shape)
        except DatasetFormatError as exc:
            raise Permanent(f"format: {exc}") from exc
        ok = True
        return Path(tmp_raw), digest
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_gz)
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_raw)


def _fetch_with_retries(attempt: Callable[[], T], url: str, retry: RetryPolicy, clock: Clock) -> T:
    """One mirror, retrying transient failures; every message counts the attempts made."""
    last = None  # the last failure that was the mirror's, not the deadline's
    for made in range(1, retry.attempts + 1):
        try:
            return attempt()
        except _Transient as exc:
            if not exc.by_deadline:
                last = str(exc)
            plural = "s" * (made != 1)
            since = f"; last: {last}" if last else ""
            if exc.by_deadline:
                raise Permanent(
                    f"stopped by the {clock} download deadline after {made} attempt{plural}{since}",
                    transient=True,
                    deadline=True,
                ) from exc
            if made == retry.attempts:
                raise Permanent(
                    f"gave up after {made} attempt{plural}{since}", transient=True
                ) from exc
            wait = retry.delay(made - 1, exc.retry_after)
            if wait >= clock.left():
                raise Permanent(
                    f"gave up after {made} attempt{plural}: waiting {wait:.1f} s for another "
                    f"would pass the {clock} download deadline{since}",
                    transient=True,
                ) from exc
            log.warning("%s: %s; retrying in %.1fs", url, exc, wait)
            time.sleep(wait)
    raise ValueError(f"RetryPolicy.attempts must be at least 1, got {retry.attempts}")


def from_mirrors(
    urls: Sequence[str],
    remote: str,
    attempt: Callable[[str], T],
    retry: RetryPolicy,
    clock: Clock,
    failures: dict[str, int],
    dataset: str,
    filename: str | None = None,
) -> T:
    """``attempt(url)`` for ``remote`` on each mirror in turn (those that failed earlier in
    this call last), retrying transient failures on each, until one succeeds.

    Raises:
        DownloadError: every mirror failed, each listed with why.
    """
    attempts: list[tuple[str, str]] = []
    transient, unreachable, out_of_time = True, True, False
    for base in sorted(urls, key=failures.__getitem__):
        url = base + remote
        if out_of_time or clock.left() <= 0:
            attempts.append((url, f"not tried: the {clock} download deadline had passed"))
            unreachable = False
            continue
        log.info("fetching %s", url)
        try:
            return _fetch_with_retries(lambda u=url: attempt(u), url, retry, clock)
        except Permanent as exc:
            log.warning("%s: %s", url, exc)
            attempts.append((url, str(exc)))
            failures[base] += 1
            transient = transient and exc.transient
            unreachable = unreachable and exc.unreachable
            out_of_time = out_of_time or exc.deadline
    raise DownloadError(filename or remote, attempts, transient, dataset, unreachable)


def cannot_write(folder: Path, bad: dict[str, str], exc: OSError) -> DataError:
    """The error for a cache that needs fetching into a folder that cannot be written."""
    kind = ChecksumError if any(why != "missing" for why in bad.values()) else DataError
    lines = "\n".join(f"  - {name}: {why}" for name, why in bad.items())
    return kind(
        f"cannot fetch into {folder}: {exc.strerror or exc}\n{lines}\n"
        "Make it writable, or pass --data-dir DIR (GPUCNN_DATA_DIR) naming a folder that "
        "holds the verified files."
    )


def download(
    name: str,
    root: str | os.PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    *,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    retry: RetryPolicy | None = None,
    min_rate: float = DEFAULT_MIN_RATE,
    deadline: float | None = None,
) -> dict[str, Path]:
    """Make sure a dataset's four IDX files are present and verified; fetch what is not.

    A complete, valid cache is only read, so a read-only folder works.

    Args:
        name: "mnist", "fashion-mnist" or "kmnist".
        root: cache folder (default: GPUCNN_DATA_DIR, else ~/.cache/gpucnn); files go in
            ``root/name/``.
        mirrors: URL prefixes to try in order instead of the registry's; GPUCNN_DATA_MIRROR,
            when set, is tried before them.
        timeout: (connect, stall) seconds: the longest wait to connect, and for the next byte
            (the response headers included) before an attempt ends.
        retry: the policy for transient failures.
        min_rate: bytes/s; a body arriving slower than this over a window of ``timeout[1]``
            seconds ends the attempt (0 disables the floor).
        deadline: seconds for the whole call (waiting for another process's lock, every file,
            mirror, retry and back-off); default GPUCNN_DOWNLOAD_DEADLINE, else 600.

    Returns:
        The local paths, keyed train_images, train_labels, test_images, test_labels.

    Raises:
        DownloadError: a file could not be had from any mirror (each mirror and why), or
            CacheLockError (a DownloadError) when another process held the folder's lock
            until the deadline.
        DataError: files are missing or corrupt in a folder that cannot be written.
    """
    spec = get_spec(name)
    check_data_dir(root, spec.name)
    urls = mirror_urls(spec, mirrors)
    retry = retry or RetryPolicy()
    clock = Clock(resolve_deadline(deadline))
    folder = dataset_dir(spec.name, root)
    paths = {key: folder / f.name for key, f in spec.files.items()}
    records = read_records(folder)
    bad = {k: why for k, f in spec.files.items() if (why := check_cached(paths[k], f, records))}
    if not bad:
        return paths
    with contextlib.ExitStack() as stack:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            stack.enter_context(folder_lock(folder, clock.left()))
        except OSError as exc:
            named = {spec.files[k].name: why for k, why in bad.items()}
            raise cannot_write(folder, named, exc) from exc
        session = stack.enter_context(requests.Session())
        failures = dict.fromkeys(urls, 0)  # a mirror that failed is tried after the others
        records = read_records(folder)  # another process may have filled it while we waited
        for key in bad:
            f, final = spec.files[key], paths[key]
            why = check_cached(final, f, records)
            if why is None:
                continue
            if why != "missing":
                log.warning("%s: cached file is not valid (%s); fetching it again", final, why)
                final.unlink()
            tmp, digest = from_mirrors(
                urls,
                f.remote,
                lambda url, f=f: _fetch_once(session, url, f, folder, timeout, min_rate, clock),
                retry,
                clock,
                failures,
                spec.name,
                f.name,
            )
            os.replace(tmp, final)
            st = final.stat()
            records[f.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
            log.info("%s verified (sha256 %s)", final, digest)
            write_records(folder, records)
    return paths


def verify_local(
    name: str, root: str | os.PathLike | None = None, keys: Sequence[str] | None = None
) -> dict[str, Path]:
    """The local paths of a dataset already downloaded, each hashed and verified; nothing is
    fetched and nothing is written (a read-only folder works).

    ``keys`` limits the check to some files (e.g. the two of one split).

    Raises:
        DataError: a file is missing.
        ChecksumError: a file does not hold what the registry (or its record) says.
    """
    spec = get_spec(name)
    check_data_dir(root, spec.name)
    folder = dataset_dir(spec.name, root)
    paths: dict[str, Path] = {}
    records = read_records(folder)
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
    return paths
