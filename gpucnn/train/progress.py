"""Progress: a one-line bar on a terminal, plain log lines elsewhere (CI, files, Prefect)."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("gpucnn.train")


class Progress:
    """A per-epoch progress bar.

    Args:
        enabled: draw anything at all.
        stream: where the bar goes (default stderr); a bar is drawn only when it is a TTY.
    """

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = enabled
        self.total, self.desc, self.start = 0, "", 0.0

    def begin(self, desc: str, total: int) -> None:
        self.desc, self.total, self.start = desc, total, time.perf_counter()

    def update(self, done: int, note: str = "") -> None:
        if not self.tty or self.total == 0:
            return
        width = 30
        filled = int(width * done / self.total)
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r{self.desc} [{bar}] {done}/{self.total} {note} eta {eta:4.0f}s ")
        self.stream.flush()

    def end(self, summary: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
        if self.enabled:
            log.info("%s", summary)
            if self.tty:
                self.stream.write(summary + "\n")
                self.stream.flush()
