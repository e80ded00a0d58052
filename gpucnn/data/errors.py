"""Typed data errors: each message names the file, the URL where there is one, and what was
expected versus what was found. Flows retry network failures, never these as a class.

Messages put a short first line first (the CLI prints it, then up to 6 more lines).
"""

from __future__ import annotations

import os


class DataError(Exception):
    """Base class of every data error."""


class ChecksumError(DataError):
    """A file's SHA-256 differs from the registry's."""


class DatasetFormatError(DataError):
    """A file is not the IDX file it should be (gzip, magic number, dimensions, counts)."""


def mirror_advice(dataset: str | None = None) -> list[str]:
    """How to point gpucnn at another source: three lines, to follow a list of failed mirrors."""
    folder = f"{dataset}/" if dataset else "<dataset>/"
    files = "cifar-10-binary.tar.gz" if dataset == "cifar10" else "the four .gz files"
    return [
        "To use another source: set GPUCNN_DATA_MIRROR=URL or pass --mirror URL (a URL prefix "
        f"serving {files});",
        "`python -m http.server 8000` run in a folder holding them serves http://127.0.0.1:8000/.",
        f"Or pass --data-dir DIR where DIR/{folder} already holds the files (a gpucnn cache).",
    ]


class DownloadError(DataError):
    """Every mirror failed for a file; ``attempts`` lists (url, why) for each mirror.

    ``transient`` is True when every mirror failed only for reasons that may pass (timeouts,
    stalls, a transfer below the rate floor, the download deadline, connection resets, 5xx,
    429): retrying later can help. A checksum, format, 403 or 404 failure, or a mirror that
    could not be reached, on any mirror makes it False.

    ``unreachable`` is True when no mirror could be reached at all (names that do not resolve,
    connections refused, no route): the machine is most likely offline, and the first line of
    the message says so.
    """

    def __init__(
        self,
        filename: str,
        attempts: list[tuple[str, str]],
        transient: bool = False,
        dataset: str | None = None,
        unreachable: bool = False,
    ) -> None:
        self.filename = filename
        self.attempts = list(attempts)
        self.transient = transient
        self.dataset = dataset
        self.unreachable = unreachable
        first = (
            f"could not download {filename}: no mirror could be reached "
            "(offline, or a firewall or proxy in the way?):"
            if unreachable
            else f"could not download {filename} from any mirror:"
        )
        lines = [f"  - {url}: {why}" for url, why in self.attempts]
        super().__init__("\n".join([first, *lines, *mirror_advice(dataset)]))

    def __reduce__(self):  # Prefect and multiprocessing pickle errors: rebuild from the fields
        fields = (self.filename, self.attempts, self.transient, self.dataset, self.unreachable)
        return type(self), fields


class CacheLockError(DownloadError):
    """Another process held a dataset folder's lock until the download deadline.

    Transient: that process's own download ends at its deadline, so a later try can succeed.
    """

    def __init__(self, lock_path: str | os.PathLike, holder: str, waited: float) -> None:
        self.lock_path = str(lock_path)
        self.holder = holder
        self.waited = waited
        self.filename = self.lock_path
        self.attempts = []
        self.transient = True
        self.dataset = None
        self.unreachable = False
        DataError.__init__(
            self,
            f"gave up after {waited:.1f} s waiting for the lock {self.lock_path}, "
            f"held by {holder}\n"
            "That process is filling the same dataset folder: let it finish, or end it if it "
            "hangs;\n"
            "or pass another --data-dir (GPUCNN_DATA_DIR), or allow more time with "
            "GPUCNN_DOWNLOAD_DEADLINE (seconds).",
        )

    def __reduce__(self):
        return type(self), (self.lock_path, self.holder, self.waited)
