"""Typed data errors: each message names the file, the URL where there is one, and what was
expected versus what was found. Flows retry network failures, never these as a class."""

from __future__ import annotations


class DataError(Exception):
    """Base class of every data error."""


class ChecksumError(DataError):
    """A file's SHA-256 differs from the registry's."""


class DatasetFormatError(DataError):
    """A file is not the IDX file it should be (gzip, magic number, dimensions, counts)."""


class DownloadError(DataError):
    """Every mirror failed for a file; ``attempts`` lists (url, why) for each mirror tried.

    ``transient`` is True when every mirror failed only for reasons that may pass (timeouts,
    connection errors, 5xx, 429): retrying later can help. A checksum, format, 403 or 404
    failure on any mirror makes it False.
    """

    def __init__(
        self, filename: str, attempts: list[tuple[str, str]], transient: bool = False
    ) -> None:
        self.filename = filename
        self.attempts = attempts
        self.transient = transient
        lines = "\n".join(f"  - {url}: {why}" for url, why in attempts)
        super().__init__(f"could not download {filename} from any mirror:\n{lines}")
