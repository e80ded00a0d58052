"""Progress: a one-line bar on a terminal, and one log line per epoch everywhere.

Each epoch's summary (epoch, losses, accuracies, lr, time, images/s) is one INFO line on the
``gpucnn.train`` logger, like the Trainer's other messages (early stopping, learning-rate
changes, resuming), so it reaches every sink exactly once: a terminal, a file or a pipe, and
Prefect's run logs (see :mod:`gpucnn.logs` for who prints it). A line says what has happened:
the epoch's line is logged once the epoch's end (its callbacks: the checkpoint written) is
over (:meth:`Progress.epoch_end`), so a run killed at any moment never has a line for an
epoch its folder does not hold; what the callbacks said meanwhile follows it. When the
stream is a terminal a bar is drawn during the epoch and erased before the line is logged; in
a file or a pipe there is no bar and no control character (no ``\\r``, no escape sequence).
A bar whose stream goes away (its terminal closed, EPIPE, EBADF) is given up, never raised
into training: the epoch lines go on through logging (to a run's log.txt, Prefect's run
logs).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from gpucnn.logs import ensure_sink

log = logging.getLogger("gpucnn.train")


class Progress:
    """A per-epoch progress bar and the epoch's log line.

    Args:
        enabled: draw and log anything at all. When on, gpucnn's INFO lines are made
            visible (:func:`gpucnn.logs.ensure_sink`: a stderr handler when nothing else
            handles them, never a second one).
        stream: where the bar goes (default stderr); a bar is drawn only when it is a TTY.
    """

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = enabled
        self.total, self.desc, self.start = 0, "", 0.0
        self.drawn = False
        self._held: list[str] | None = None  # messages said while an epoch ends
        if enabled:
            ensure_sink()

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
        self.drawn = self._draw(
            f"\r{self.desc} [{bar}] {done}/{self.total} {note} eta {eta:4.0f}s "
        )

    def clear(self) -> None:
        """Erase the bar (if one is drawn) so that a log line starts on a clean line."""
        if self.drawn:
            self._draw("\r\x1b[2K")
            self.drawn = False

    def _draw(self, text: str) -> bool:
        """Write ``text`` to the bar's stream; a stream that fails (went away, closed) ends
        the bar for good instead of the training."""
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError) as exc:
            self.tty = False
            log.debug("progress bar off: its stream failed (%s)", exc)
            return False
        return True

    def end(self, summary: str) -> None:
        self.clear()
        if self.enabled:
            log.info("%s", summary)

    def say(self, message: str) -> None:
        """Log ``message`` (whether or not progress is enabled); while an epoch ends, after
        that epoch's line."""
        if self._held is not None:
            self._held.append(message)
        else:
            log.info("%s", message)

    @contextlib.contextmanager
    def epoch_end(self, summary: str) -> Iterator[None]:
        """The epoch's end runs in this block (its callbacks: the checkpoint's commit); the
        epoch's line ``summary`` is logged when the block is over, then what was said
        meanwhile (:meth:`say`). A block that fails logs no line for the epoch (it was not
        committed), only what was said."""
        self.clear()
        self._held = []
        done = False
        try:
            yield
            done = True
        finally:
            held, self._held = self._held, None
            if done and self.enabled:
                log.info("%s", summary)
            for message in held:
                log.info("%s", message)
