"""Where gpucnn's log lines go.

gpucnn logs on the ``gpucnn`` logger and its children (``gpucnn.train``: epoch lines, early
stopping, learning-rate changes, resuming; ``gpucnn.data``: downloads; ``gpucnn`` itself: the
device ``"auto"`` picked). Each line is written once, by whichever of these handles it:

- your own logging set-up (``logging.basicConfig(...)``, handlers on ``gpucnn`` or the root
  logger): gpucnn never adds a handler beside one of yours;
- Prefect, under a flow: ``PREFECT_LOGGING_EXTRA_LOGGERS=gpucnn`` attaches the logger to the
  run's logs, and the root logger's console handler prints it;
- otherwise, once progress is asked for (``Trainer(..., progress=True)``, the default), a
  plain ``message``-only handler on stderr, added once per process and silent as soon as
  the root logger has a handler of its own (so configuring logging later never doubles a line).

:func:`show_info` sets ``gpucnn`` to INFO when nobody set its level (Python's default,
WARNING, would drop the epoch lines); a level you set is left alone.
"""

from __future__ import annotations

import logging
import sys

LOGGER = "gpucnn"


class _StderrFallback(logging.StreamHandler):
    """Prints gpucnn's lines on the current ``sys.stderr`` while nothing else would: it stays
    silent when the root logger (the user's set-up, Prefect's console, pytest's capture) or
    the ``gpucnn`` logger has another handler."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):  # follow sys.stderr when it is replaced (as logging.lastResort does)
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        others = [h for h in logging.getLogger(LOGGER).handlers if h is not self]
        if others or logging.getLogger().handlers:
            return
        super().emit(record)


def show_info() -> None:
    """Let gpucnn's INFO lines through: the ``gpucnn`` logger at INFO unless its level was set."""
    logger = logging.getLogger(LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def ensure_sink() -> None:
    """Make gpucnn's INFO lines visible somewhere: :func:`show_info`, and when no handler on
    the way from ``gpucnn`` to the root would take them, a stderr handler (once)."""
    show_info()
    logger = logging.getLogger(LOGGER)
    if any(isinstance(h, _StderrFallback) for h in logger.handlers):
        return
    if not logger.hasHandlers():
        logger.addHandler(_StderrFallback())
